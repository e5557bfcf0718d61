"""`TokenCorpus`: a ready-made `Dataset` over one stream of token ids.

It reproduces the reference notebook's data handling (character vocabulary,
90/10 split, random train windows, exhaustive val windows) but draws every
batch from its own seed, so that any batch can be re-drawn on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch

from gradaudit.types import Batch

SPLITS = ("train", "val")


class TokenCorpus:
    """A 1-D tensor of token ids with its vocabulary, split into train and val.

    The first `int(train_fraction * len(tokens))` tokens are train, the rest val,
    as in the notebook. Batches are drawn on the CPU and are deterministic.
    """

    def __init__(
        self,
        tokens: torch.Tensor,
        vocab: Sequence[str],
        train_fraction: float = 0.9,
        block_size: int = 8,
    ) -> None:
        if tokens.dim() != 1 or tokens.is_floating_point() or tokens.is_complex():
            raise ValueError(
                f"tokens must be a 1-D integer tensor, got {tokens.dtype} of shape "
                f"{tuple(tokens.shape)}"
            )
        if len(tokens) == 0:
            raise ValueError("the corpus is empty: it has no tokens")
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self.block_size = block_size
        if not 0.0 <= train_fraction <= 1.0:
            raise ValueError(f"train_fraction must be in [0, 1], got {train_fraction}")
        self._tokens = tokens.to(device="cpu", dtype=torch.long)
        self._vocab = tuple(vocab)
        low, high = int(self._tokens.min()), int(self._tokens.max())
        if low < 0 or high >= len(self._vocab):
            raise ValueError(
                f"token ids must lie in [0, {len(self._vocab)}) for a vocabulary of "
                f"{len(self._vocab)}, got ids from {low} to {high}"
            )
        self._stoi = {symbol: i for i, symbol in enumerate(self._vocab)}
        n = int(train_fraction * len(self._tokens))
        self._splits = {"train": self._tokens[:n], "val": self._tokens[n:]}

    @classmethod
    def from_text(cls, text: str, train_fraction: float = 0.9, block_size: int = 8) -> TokenCorpus:
        """Character-level corpus: the vocabulary is the sorted set of characters."""
        vocab = sorted(set(text))
        stoi = {ch: i for i, ch in enumerate(vocab)}
        tokens = torch.tensor([stoi[ch] for ch in text], dtype=torch.long)
        return cls(tokens, vocab, train_fraction, block_size)

    @property
    def model_args(self) -> dict[str, int]:
        """What a token model is built from: the vocabulary size and the window length."""
        return {"vocab_size": self.vocab_size, "block_size": self.block_size}

    @property
    def vocab(self) -> tuple[str, ...]:
        return self._vocab

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    @property
    def tokens(self) -> torch.Tensor:
        """All token ids, train followed by val."""
        return self._tokens

    def __len__(self) -> int:
        return len(self._tokens)

    def split_tokens(self, split: str) -> torch.Tensor:
        """The token ids of one split, `"train"` or `"val"`."""
        if split not in self._splits:
            raise ValueError(f"unknown split {split!r}: expected one of {', '.join(SPLITS)}")
        return self._splits[split]

    def encode(self, text: str) -> list[int]:
        """Symbol ids of the characters of `text` (each must be in the vocabulary)."""
        try:
            return [self._stoi[ch] for ch in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a sequence of token ids (inverse of `encode` for character vocabularies)."""
        return "".join(self._vocab[int(i)] for i in ids)

    def batches(
        self, split: str, count: int | None, size: int | None, seed: int
    ) -> Iterator[Batch]:
        """Yield `(size, block_size)` batches of tensors `inputs` and `targets`, the
        targets being the inputs shifted by one.

        train: `count` batches (required) of `size` random windows; batch k is drawn
        from its own generator seeded with `seed + k`, so batch k of seed S equals
        batch 0 of seed S + k: that is how a failing batch is reproduced alone.

        val: every window of the val split in order, in chunks of `size` consecutive
        windows (`None`: all of them in one batch, the notebook's exhaustive batch);
        the first `count` chunks (`None`: all). `seed` is only recorded.

        Arguments are checked here, before the first batch is drawn.
        """
        data = self.split_tokens(split)
        block_size = self.block_size
        windows = len(data) - block_size
        if windows < 1:
            raise ValueError(
                f"the {split} split is too short for block_size {block_size}: it has "
                f"{len(data)} of the corpus's {len(self)} tokens and needs at least "
                f"{block_size + 1}"
            )
        if size is not None and size < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        if count is not None and count < 0:
            raise ValueError(f"batch count must not be negative, got {count}")
        if split == "train":
            if count is None or size is None:
                raise ValueError("train batches need both a count and a size")
            return self._train_batches(data, windows, count, size, block_size, seed)
        return self._val_batches(data, windows, count, size, block_size, seed)

    @staticmethod
    def _train_batches(
        data: torch.Tensor, windows: int, count: int, size: int, block_size: int, seed: int
    ) -> Iterator[Batch]:
        for k in range(count):
            generator = torch.Generator().manual_seed(seed + k)
            starts = torch.randint(windows, (size,), generator=generator)
            yield _window_batch(data, starts, block_size, index=k, seed=seed + k)

    @staticmethod
    def _val_batches(
        data: torch.Tensor,
        windows: int,
        count: int | None,
        size: int | None,
        block_size: int,
        seed: int,
    ) -> Iterator[Batch]:
        step = size or windows
        chunks = -(-windows // step)
        if count is not None:
            chunks = min(chunks, count)
        for k in range(chunks):
            starts = torch.arange(k * step, min((k + 1) * step, windows))
            yield _window_batch(data, starts, block_size, index=k, seed=seed)


def _window_batch(
    data: torch.Tensor, starts: torch.Tensor, block_size: int, index: int, seed: int
) -> Batch:
    """Gather the windows starting at `starts` in one indexing op (no loop over windows)."""
    positions = starts[:, None] + torch.arange(block_size)
    return Batch({"inputs": data[positions], "targets": data[positions + 1]}, index, seed)
