"""TokenCorpus batching and the "text" data plugin's sources."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import gradaudit_text
import pytest
import torch

from gradaudit import TokenCorpus

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TEXT = "the quick brown fox jumps over the lazy dog. THE END!\n" * 20


@pytest.fixture
def corpus() -> TokenCorpus:
    return TokenCorpus.from_text(TEXT)


@pytest.fixture
def cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRADAUDIT_CACHE_DIR", str(cache))
    monkeypatch.delenv("GRADAUDIT_DATA_DIR", raising=False)
    return cache


# --- TokenCorpus -----------------------------------------------------------------------


def cut(corpus: TokenCorpus, block_size: int) -> TokenCorpus:
    """The same tokens and vocabulary, cut into windows of `block_size`."""
    return TokenCorpus(corpus.tokens, corpus.vocab, block_size=block_size)


def test_from_text_vocab_is_sorted_and_round_trips(corpus: TokenCorpus) -> None:
    assert list(corpus.vocab) == sorted(set(TEXT))
    assert corpus.vocab_size == len(set(TEXT))
    assert corpus.decode(corpus.encode(TEXT)) == TEXT
    assert corpus.tokens.tolist() == corpus.encode(TEXT)
    assert corpus.encode(" T") == [corpus.vocab.index(" "), corpus.vocab.index("T")]


def test_split_is_90_10(corpus: TokenCorpus) -> None:
    n = int(0.9 * len(TEXT))
    assert len(corpus.split_tokens("train")) == n
    assert len(corpus.split_tokens("val")) == len(TEXT) - n
    assert torch.equal(
        torch.cat([corpus.split_tokens("train"), corpus.split_tokens("val")]), corpus.tokens
    )


def test_train_batches_are_shifted_windows(corpus: TokenCorpus) -> None:
    train = corpus.split_tokens("train")
    batches = list(cut(corpus, 8).batches("train", count=3, size=5, seed=7))
    assert len(batches) == 3
    for k, batch in enumerate(batches):
        assert batch.inputs.shape == batch.targets.shape == (5, 8)
        assert batch.inputs.dtype == torch.long
        assert (batch.index, batch.seed) == (k, 7 + k)
        assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
        for row_x, row_y in zip(batch.inputs, batch.targets, strict=True):
            start = _find_window(train, row_x, row_y)
            assert 0 <= start < len(train) - 8


def test_train_batches_follow_the_notebook_draw(corpus: TokenCorpus) -> None:
    train = corpus.split_tokens("train")
    (batch,) = cut(corpus, 6).batches("train", count=1, size=4, seed=123)
    starts = torch.randint(len(train) - 6, (4,), generator=torch.Generator().manual_seed(123))
    assert torch.equal(batch.inputs, torch.stack([train[i : i + 6] for i in starts]))
    assert torch.equal(batch.targets, torch.stack([train[i + 1 : i + 7] for i in starts]))


def test_train_batches_are_deterministic_per_seed(corpus: TokenCorpus) -> None:
    def draw(seed: int) -> list[torch.Tensor]:
        return [b.inputs for b in cut(corpus, 8).batches("train", 4, 16, seed)]

    first, again, other = draw(3), draw(3), draw(4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[0], other[0])
    assert not torch.equal(first[0], first[1])


def test_train_batch_k_of_seed_s_is_batch_0_of_seed_s_plus_k(corpus: TokenCorpus) -> None:
    batches = list(cut(corpus, 5).batches("train", count=4, size=3, seed=10))
    for k, batch in enumerate(batches):
        (alone,) = cut(corpus, 5).batches("train", count=1, size=3, seed=10 + k)
        assert torch.equal(alone.inputs, batch.inputs)
        assert torch.equal(alone.targets, batch.targets)
        assert alone.seed == batch.seed == 10 + k
        assert alone.index == 0


def test_train_needs_count_and_size(corpus: TokenCorpus) -> None:
    with pytest.raises(ValueError, match="count"):
        cut(corpus, 8).batches("train", None, 4, 0)
    with pytest.raises(ValueError, match="size"):
        cut(corpus, 8).batches("train", 1, None, 0)


def test_val_is_every_window_in_order(corpus: TokenCorpus) -> None:
    val = corpus.split_tokens("val")
    (batch,) = cut(corpus, 8).batches("val", count=None, size=None, seed=5)
    windows = len(val) - 8
    assert batch.inputs.shape == batch.targets.shape == (windows, 8)
    assert torch.equal(batch.inputs, torch.stack([val[i : i + 8] for i in range(windows)]))
    assert torch.equal(batch.targets, torch.stack([val[i + 1 : i + 9] for i in range(windows)]))
    assert (batch.index, batch.seed) == (0, 5)


def test_val_chunks_by_size_and_count(corpus: TokenCorpus) -> None:
    (whole,) = cut(corpus, 4).batches("val", None, None, 0)
    windows = whole.inputs.shape[0]
    chunks = list(cut(corpus, 4).batches("val", None, 10, 9))
    assert len(chunks) == -(-windows // 10)
    assert [c.inputs.shape[0] for c in chunks[:-1]] == [10] * (len(chunks) - 1)
    assert torch.equal(torch.cat([c.inputs for c in chunks]), whole.inputs)
    assert torch.equal(torch.cat([c.targets for c in chunks]), whole.targets)
    assert [(c.index, c.seed) for c in chunks] == [(k, 9) for k in range(len(chunks))]
    first_two = list(cut(corpus, 4).batches("val", 2, 10, 9))
    assert len(first_two) == 2
    assert torch.equal(torch.cat([c.inputs for c in first_two]), whole.inputs[:20])


def test_block_size_longer_than_split_is_rejected() -> None:
    small = TokenCorpus.from_text("abcdefghijklmnopqrst")  # 18 train, 2 val tokens
    with pytest.raises(ValueError, match=r"too short for block_size 2.*20 tokens"):
        cut(small, 2).batches("val", None, None, 0)
    with pytest.raises(ValueError, match="block_size 18"):
        cut(small, 18).batches("train", 1, 1, 0)
    assert len(list(cut(small, 17).batches("train", 1, 1, 0))) == 1


def test_bad_split_is_rejected(corpus: TokenCorpus) -> None:
    with pytest.raises(ValueError, match="'test'"):
        cut(corpus, 4).batches("test", 1, 1, 0)


def test_constructor_checks_tokens() -> None:
    with pytest.raises(ValueError, match="empty"):
        TokenCorpus.from_text("")
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        TokenCorpus(torch.tensor([0, 1, 2]), ["a", "b"])
    with pytest.raises(ValueError, match="1-D integer"):
        TokenCorpus(torch.zeros(3), ["a"])


def _find_window(train: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> int:
    """The start of a window whose input is x and whose target is y (x shifted by one)."""
    windows = train.unfold(0, len(x) + 1, 1)
    matches = ((windows[:, :-1] == x) & (windows[:, 1:] == y)).all(dim=1).nonzero()
    assert len(matches) > 0, "batch row is not a window of the train split"
    return int(matches[0])


# --- the "text" plugin -----------------------------------------------------------------


def test_plugin_registers_text_loader() -> None:
    registered: dict[str, object] = {}
    gradaudit_text.register_data(register=registered.__setitem__)
    assert registered == {"text": gradaudit_text.load_text}


def test_builtin_is_default_and_offline(tmp_path: Path, cache_dir: Path) -> None:
    corpus = gradaudit_text.load_text({}, tmp_path)
    explicit = gradaudit_text.load_text({"source": "builtin"}, tmp_path)
    assert corpus.vocab_size >= 40
    assert len(corpus) > 10_000
    assert torch.equal(corpus.tokens, explicit.tokens)
    assert not cache_dir.exists()


def test_path_is_relative_to_base_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "spec").mkdir()
    (tmp_path / "spec" / "corpus.txt").write_text("hello, world\n" * 10, encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # not the spec's folder
    corpus = gradaudit_text.load_text({"path": "corpus.txt"}, tmp_path / "spec")
    assert corpus.decode(corpus.tokens.tolist()) == "hello, world\n" * 10
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "spec" / "missing.txt"))):
        gradaudit_text.load_text({"path": "missing.txt"}, tmp_path / "spec")


def test_unknown_option_and_two_sources_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown.*bogus.*allowed.*path.*url"):
        gradaudit_text.load_text({"bogus": 1}, tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        gradaudit_text.load_text({"path": "a.txt", "url": "file:///a"}, tmp_path)
    with pytest.raises(ValueError, match="exactly one"):
        gradaudit_text.load_text({"source": "builtin", "path": "a.txt"}, tmp_path)
    with pytest.raises(ValueError, match="allowed"):
        gradaudit_text.load_text({"source": "wikipedia"}, tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        gradaudit_text.load_text({"url": "file:///a"}, tmp_path)


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match="empty"):
        gradaudit_text.load_text({"path": "empty.txt"}, tmp_path)


def test_url_is_downloaded_once_into_the_cache(tmp_path: Path, cache_dir: Path) -> None:
    source = tmp_path / "remote.txt"
    source.write_text("Remote text, fetched once.\n" * 5, encoding="utf-8")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    options = {"url": source.as_uri(), "sha256": digest}

    first = gradaudit_text.load_text(options, tmp_path)
    assert (cache_dir / "data" / digest).read_bytes() == source.read_bytes()
    assert [p.name for p in (cache_dir / "data").iterdir()] == [digest]  # no temp files left

    source.unlink()  # the second load can only come from the cache
    second = gradaudit_text.load_text(options, tmp_path)
    assert torch.equal(first.tokens, second.tokens)


def test_url_with_wrong_sha256_is_rejected(tmp_path: Path, cache_dir: Path) -> None:
    source = tmp_path / "remote.txt"
    source.write_text("some text\n", encoding="utf-8")
    actual = hashlib.sha256(source.read_bytes()).hexdigest()
    wrong = "0" * 64
    with pytest.raises(ValueError, match=f"expected sha256 {wrong}, got {actual}"):
        gradaudit_text.load_text({"url": source.as_uri(), "sha256": wrong}, tmp_path)
    assert not (cache_dir / "data" / wrong).exists()
    assert list((cache_dir / "data").iterdir()) == []


def test_a_url_larger_than_the_cap_is_refused_unread(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spec's url is fetched; what is read is capped, so a spec cannot fill the disk."""
    source = tmp_path / "remote.txt"
    source.write_text("x" * 1000, encoding="utf-8")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    options = {"url": source.as_uri(), "sha256": digest}
    monkeypatch.setattr(gradaudit_text, "MAX_DOWNLOAD_BYTES", 999)
    with pytest.raises(ValueError, match="larger than"):
        gradaudit_text.load_text(options, tmp_path)
    assert not (cache_dir / "data" / digest).exists()
    monkeypatch.setattr(gradaudit_text, "MAX_DOWNLOAD_BYTES", 1000)  # exactly the cap: read
    assert gradaudit_text.load_text(options, tmp_path).tokens.numel() == 1000


def test_tinyshakespeare_from_data_dir(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not (SHARED_DATA / "tinyshakespeare.txt").is_file():
        pytest.skip(f"no Tiny Shakespeare at {SHARED_DATA}")
    monkeypatch.setenv("GRADAUDIT_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setattr(gradaudit_text, "_TINYSHAKESPEARE_URL", "file:///nonexistent")
    corpus = gradaudit_text.load_text({"source": "tinyshakespeare"}, tmp_path)
    assert corpus.vocab_size == 65
    assert len(corpus) == 1_115_394
    assert len(corpus.split_tokens("train")) == int(0.9 * 1_115_394)


def test_tinyshakespeare_offline_says_where_to_put_it(
    tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("GRADAUDIT_DATA_DIR", str(empty))
    monkeypatch.setattr(gradaudit_text, "_TINYSHAKESPEARE_URL", "file:///nonexistent")
    with pytest.raises(FileNotFoundError, match="GRADAUDIT_DATA_DIR") as info:
        gradaudit_text.load_text({"source": "tinyshakespeare"}, tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert str(cache_dir) in message
    assert "86c4e6aa" in message
