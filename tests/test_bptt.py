"""The CharRNN's manual BPTT equals torch autograd, tensor by tensor, for any (B, T, H)."""

from __future__ import annotations

import pytest
import torch
from gradaudit_charrnn.bptt import charrnn_bptt
from gradaudit_charrnn.model import CharRNN, build_charrnn

from gradaudit import Batch, Forward

# float64: tight; float32: torch.testing.assert_close's defaults (None).
TIGHT: dict[torch.dtype, tuple[float | None, float | None]] = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (None, None),
}
DTYPES = [pytest.param(torch.float64, id="float64"), pytest.param(torch.float32, id="float32")]


def assert_close(got: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, what: str = "") -> None:
    rtol, atol = TIGHT[dtype]
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol, msg=lambda m: f"{what}: {m}")


def make_case(
    B: int, T: int, H: int, vocab: int, dtype: torch.dtype, seed: int = 0, d_model: int = 24
) -> tuple[CharRNN, Batch]:
    torch.manual_seed(seed)
    model = build_charrnn(vocab, d_model=d_model, n_hidden=H, h0=0.1).to(dtype)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(0, vocab, (B, T), generator=gen)
    y = torch.randint(0, vocab, (B, T), generator=gen)
    return model, Batch({"inputs": x, "targets": y}, index=0, seed=seed)


def grads(
    model: CharRNN, batch: Batch
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], Forward]:
    """(autograd's, manual BPTT's, the forward) for every parameter and intermediate."""
    forward = model(batch.inputs, batch.targets)
    assert isinstance(forward, Forward)
    targets = dict(model.named_parameters()) | dict(forward.intermediates)
    reference = torch.autograd.grad(forward.loss, list(targets.values()))
    with torch.no_grad():
        manual = dict(charrnn_bptt(model, batch, forward.detached()))
    return dict(zip(targets, reference, strict=True)), manual, forward


SHAPES = [
    pytest.param(1, 8, 200, 65, id="B1-T8-H200"),
    pytest.param(32, 8, 64, 65, id="B32-T8"),
    pytest.param(3, 64, 64, 65, id="B3-T64-long"),
    pytest.param(16, 8, 32, 2, id="B16-vocab2-repeats"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("B", "T", "H", "vocab"), SHAPES)
def test_manual_bptt_equals_autograd(
    B: int, T: int, H: int, vocab: int, dtype: torch.dtype
) -> None:
    model, batch = make_case(B, T, H, vocab, dtype)
    reference, manual, _ = grads(model, batch)
    assert manual.keys() == reference.keys()
    for name, ref in reference.items():
        got = manual[name]
        assert got.dtype == dtype, name
        assert ref.abs().max() > 0, f"{name}: autograd's gradient is all zero, proves nothing"
        assert_close(got, ref, dtype, name)


def test_returns_a_gradient_for_every_parameter_and_intermediate() -> None:
    B, T = 4, 6
    model, batch = make_case(B, T, 16, 11, torch.float64)
    reference, manual, forward = grads(model, batch)
    params = {name for name, _ in model.named_parameters()}
    assert params == {"C.weight", "U.weight", "U.bias", "W.weight", "V.weight", "V.bias"}
    assert set(forward.intermediates) == {"logits"} | {f"h.{t}" for t in range(1, T + 1)}
    assert set(manual) == set(reference) == params | set(forward.intermediates)
    shapes = dict(model.named_parameters()) | dict(forward.intermediates)
    for name, tensor in shapes.items():
        assert manual[name].shape == tensor.shape, name


def test_h0_is_a_constant_not_a_parameter() -> None:
    model, _ = make_case(2, 3, 8, 5, torch.float64)
    assert "h0" not in dict(model.named_parameters())
    assert not model.h0.requires_grad
    # Built in float32 and then cast, so it is float32's 0.1 (as in a gradaudit run).
    torch.testing.assert_close(model.h0, torch.full((1, 8), 0.1, dtype=torch.float64))


@pytest.mark.parametrize("dtype", DTYPES)
def test_embedding_gradient_accumulates_repeated_tokens(dtype: torch.dtype) -> None:
    """Overwriting `dC[x] = ...` instead of accumulating loses gradient on repeated ids."""
    B, T, vocab = 16, 8, 40
    model, batch = make_case(B, T, 32, vocab, dtype)
    reference, manual, forward = grads(model, batch)
    ids = batch.inputs.reshape(-1)
    counts = torch.bincount(ids, minlength=vocab)
    assert int(counts.max()) > 1, "the test data must repeat token ids"

    # Per-position contributions da_t U, from the (separately checked) hidden-state gradients.
    hs = torch.stack([forward.intermediates[f"h.{t}"].detach() for t in range(1, T + 1)], dim=1)
    dh = torch.stack([manual[f"h.{t}"] for t in range(1, T + 1)], dim=1)
    contrib = ((dh * (1 - hs**2)) @ model.U.weight.detach()).reshape(B * T, -1)

    zeros = torch.zeros_like(model.C.weight)
    accumulated = zeros.index_put((ids,), contrib, accumulate=True)
    overwritten = zeros.clone()
    overwritten[ids] = contrib  # the bug: the last position with each id wins

    ref = reference["C.weight"]
    assert_close(accumulated, ref, dtype, "index_put accumulate")
    assert_close(manual["C.weight"], ref, dtype, "charrnn_bptt")
    with pytest.raises(AssertionError):
        assert_close(overwritten, ref, dtype)
    # The damage is exactly on the repeated rows: ids seen once (or never) agree either way.
    once = counts <= 1
    assert bool(once.any()) and bool((counts > 1).any())
    assert_close(overwritten[once], ref[once], dtype)
    repeated = counts > 1
    assert not torch.allclose(overwritten[repeated], ref[repeated])


def test_gradient_is_the_mean_over_all_batch_positions() -> None:
    """Two copies of one sequence give the same gradients as the sequence alone (1/(B*T))."""
    model, batch = make_case(1, 7, 16, 9, torch.float64)
    twice = Batch({"inputs": batch.inputs.repeat(2, 1), "targets": batch.targets.repeat(2, 1)})
    _, one, _ = grads(model, batch)
    _, two, _ = grads(model, twice)
    for name in ("C.weight", "U.weight", "U.bias", "W.weight", "V.weight", "V.bias"):
        torch.testing.assert_close(two[name], one[name], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(two["logits"][:1] * 2, one["logits"], rtol=1e-10, atol=1e-12)
