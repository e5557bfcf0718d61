"""The micro_batch check kind on model audits: it catches a manual gradient that is right
only at the configured batch size, stays green on correct code in every dtype with the
default tolerances, and refuses (an error, never a red or a green) models whose loss is
not micro-batch invariant."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from gradaudit.checks.micro_batch import combine, not_invariant, split, split_sizes
from gradaudit.errors import SpecError
from gradaudit.plan import plan_lines
from gradaudit.results import GroupResult
from gradaudit.spec import LoadedSpec, load_spec
from gradaudit.types import Batch
from tests.conftest import REPO, plan_for, run_groups, small_spec

GALLERY = "gradaudit_charrnn.invariance_gallery"
DTYPES = ["float64", "float32", "bfloat16", "float16"]
CHARRNN_TENSORS = {
    "logits",
    *(f"h.{t}" for t in range(1, 6)),
    *("C.weight", "U.weight", "U.bias", "W.weight", "V.weight", "V.bias"),
}


def audit(tmp_path: Path, **overrides: Any) -> LoadedSpec:
    spec = small_spec(**overrides)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return load_spec(path)


def statuses(groups: list[GroupResult], check: str) -> dict[tuple[str, str], str]:
    return {(g.dtype, s.tensor): s.status for g in groups if g.check == check for s in g.tensors}


def failing(groups: list[GroupResult], check: str, dtype: str) -> set[str]:
    return {t for (d, t), s in statuses(groups, check).items() if d == dtype and s != "pass"}


# -- the pieces ------------------------------------------------------------------------------


def test_split_keeps_tensors_that_do_not_follow_the_batch() -> None:
    batch = Batch({"x": torch.arange(14).view(7, 2), "w": torch.ones(3), "s": torch.tensor(1.0)})
    parts = split(batch, split_sizes(7, 3))
    assert [p["x"].shape[0] for p in parts] == [1, 2, 4]  # unequal
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"])
    assert all(p["w"] is batch["w"] and p["s"] is batch["s"] for p in parts)


def test_combine_sums_parameters_and_concatenates_along_the_rows() -> None:
    a, b = torch.ones(2, 3), 2 * torch.ones(2, 3)
    summed = combine([a, b], torch.Size([2, 3]), [1, 3], [0.25, 0.75])
    assert isinstance(summed, torch.Tensor) and summed.dtype == torch.float64
    assert torch.allclose(summed, torch.full((2, 3), 1.75, dtype=torch.float64))
    rows = combine(
        [torch.ones(3, 1, 2), torch.ones(3, 4, 2)], torch.Size([3, 5, 2]), [1, 4], [1, 1]
    )
    assert isinstance(rows, torch.Tensor) and rows.shape == (3, 5, 2)
    assert "cannot combine" in str(combine([a, b], torch.Size([4, 4]), [1, 3], [1, 1]))


def test_batchnorm_and_dropout_in_training_mode_are_refused_by_name() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert "`1` is a BatchNorm1d in training mode" in str(not_invariant(model))
    assert not_invariant(model.eval()) is None
    assert "Dropout" in str(not_invariant(torch.nn.Sequential(torch.nn.Dropout(0.1))))
    assert not_invariant(torch.nn.Sequential(torch.nn.Dropout(0.0))) is None


# -- spec and plan ---------------------------------------------------------------------------


def test_misspelt_key_is_a_one_line_error_naming_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        audit(tmp_path, checks={"micro_batch": {"split": 2}})
    message = str(caught.value)
    assert "\n" not in message and "spec.yaml:" in message and "split" in message
    with pytest.raises(SpecError, match="reduction"):
        audit(tmp_path, checks={"micro_batch": {"reduction": "none"}})  # a scalar loss


def test_plan_shows_a_micro_batch_case_per_dtype(tmp_path: Path) -> None:
    made = plan_for(audit(tmp_path, checks={"micro_batch": {}}))
    cases = [c for c in made.cases if c.check == "micro_batch"]
    assert [c.dtype for c in cases] == ["float32", "float64"]
    assert {t.name for t in cases[0].tensors} == CHARRNN_TENSORS
    gradients = next(c for c in made.cases if c.check == "gradients")
    assert [t.tol for t in cases[0].tensors] == [t.tol for t in gradients.tensors]
    lines = plan_lines(made)[1:]
    assert sum(line.split()[2] == "micro_batch" for line in lines) == 2 * len(CHARRNN_TENSORS)


# -- catches, and stays quiet ----------------------------------------------------------------


def test_correct_charrnn_is_green_in_every_dtype(tmp_path: Path) -> None:
    groups = run_groups(
        audit(
            tmp_path,
            dtypes=DTYPES,
            batches={"split": "train", "count": 3, "size": 11, "seed": 3},
            checks={"micro_batch": {"splits": 3}},
        )
    )
    found = statuses(groups, "micro_batch")
    assert len(found) == 4 * len(CHARRNN_TENSORS)
    assert set(found.values()) == {"pass"}, {k: v for k, v in found.items() if v != "pass"}
    assert all(s.batches == 3 for g in groups if g.check == "micro_batch" for s in g.tensors)


def test_sum_reduction_catches_a_mean_loss(tmp_path: Path) -> None:
    """The CharRNN's loss is a mean: combined as a sum, even autograd disagrees, which is
    the model's nature (an error that says so), not the manual code's fault (never a fail)."""
    groups = run_groups(
        audit(tmp_path, dtypes=["float64"], checks={"micro_batch": {"reduction": "sum"}})
    )
    assert set(statuses(groups, "micro_batch").values()) == {"error"}
    summary = next(g for g in groups if g.check == "micro_batch").tensors[0]
    assert "not micro-batch invariant" in summary.errors[0]


def test_hardcoded_batch_size_passes_gradients_and_fails_micro_batch(tmp_path: Path) -> None:
    groups = run_groups(
        audit(
            tmp_path,
            plugins=[GALLERY],
            gradients={"plugin": "charrnn-bptt-bug-hardcoded-batch"},
            batches={"split": "train", "count": 2, "size": 32, "seed": 3},
            dtypes=["float64", "float32"],
            checks={"micro_batch": {}},
        )
    )
    for dtype in ("float64", "float32"):
        assert failing(groups, "gradients", dtype) == set()
        assert failing(groups, "micro_batch", dtype) == CHARRNN_TENSORS
        assert {s for (d, _), s in statuses(groups, "micro_batch").items() if d == dtype} == {
            "fail"
        }


def test_too_few_rows_is_an_error_not_a_pass(tmp_path: Path) -> None:
    groups = run_groups(
        audit(
            tmp_path,
            dtypes=["float64"],
            batches={"split": "train", "count": 1, "size": 2, "seed": 3},
            checks={"micro_batch": {"splits": 3}},
        )
    )
    assert set(statuses(groups, "gradients").values()) == {"pass"}
    assert set(statuses(groups, "micro_batch").values()) == {"error"}
    summary = next(g for g in groups if g.check == "micro_batch").tensors[0]
    assert "2 row(s) cannot make 3 micro-batches" in summary.errors[0]


def test_mlp_batchnorm_is_an_error_for_every_tensor_never_a_fail(tmp_path: Path) -> None:
    """makemore's batch norm is written out by hand (no BatchNorm module to spot): autograd's
    own combined micro-batch gradient tells that the loss is not invariant. (The check is
    not for such models; this proves it says so instead of blaming the manual code.)"""
    loaded = load_spec(
        REPO / "specs" / "mlp-batchnorm.yaml",
        ("batches.count=1", "devices=[cpu]", "dtypes=[float64]", "checks={micro_batch: {}}"),
    )
    groups = run_groups(loaded)
    found = statuses(groups, "micro_batch")
    # b1's true gradient is zero at any batch size (batch norm removes it): invariant, and
    # the manual gradient's is too; every other tensor's is an error, none a fail.
    assert found.pop(("float64", "b1")) == "pass"
    assert found and set(found.values()) == {"error"}
    assert set(statuses(groups, "gradients").values()) == {"pass"}


def test_micro_batch_leaves_the_gradients_case_as_it_was(tmp_path: Path) -> None:
    """The micro-batches' forwards must not disturb what the pass computes for later batches."""
    with_check = run_groups(audit(tmp_path, dtypes=["float32"], checks={"micro_batch": {}}))
    without = run_groups(audit(tmp_path, dtypes=["float32"]))
    mine = next(g for g in with_check if g.check == "gradients").tensors
    theirs = next(g for g in without if g.check == "gradients").tensors
    assert [(s.max_abs, s.max_rel) for s in mine] == [(s.max_abs, s.max_rel) for s in theirs]


# -- a loss that is a mean over masked tokens: `weight` ------------------------------------

MASKED = str(Path(__file__).with_name("masked_plugins.py"))
MASKED_TENSORS = {"out", "h", "W1", "b1", "W2"}


def masked_audit(tmp_path: Path, gradients: str, micro_batch: dict[str, Any]) -> LoadedSpec:
    spec = {
        "name": "masked",
        "plugins": [MASKED],
        "model": {"plugin": "masked-regression"},
        "gradients": {"plugin": gradients},
        "data": {
            "plugin": "random",
            "options": {
                "tensors": {
                    "x": {"shape": [6, 4]},
                    "y": {"shape": [6]},
                    "mask": {"shape": [6], "dtype": "bool", "p": 0.7},
                }
            },
        },
        "batches": {"count": 3, "size": 12, "seed": 5},
        "devices": ["cpu"],
        "dtypes": ["float64", "float32"],
        "checks": {"micro_batch": {"splits": 3, **micro_batch}},
    }
    path = tmp_path / "masked.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return load_spec(path)


def test_token_weights_count_a_mask_or_labels_not_ignored() -> None:
    from gradaudit.checks.micro_batch import token_weights

    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.bool)
    labels = torch.where(mask, torch.arange(12).view(4, 3), torch.full((4, 3), -100))
    batch = Batch({"mask": mask, "labels": labels, "bias": torch.ones(3)})
    parts = split(batch, [1, 3])
    assert token_weights(batch, parts, "mask", None) == [2 / 7, 5 / 7]
    assert token_weights(batch, parts, "labels", -100) == [2 / 7, 5 / 7]
    assert "not a batch tensor (the batch has mask, labels, bias)" in str(
        token_weights(batch, parts, "tokens", None)
    )
    assert "dim 0 must be the batch's 4 rows" in str(token_weights(batch, parts, "bias", None))
    assert "integer weight tensor" in str(
        token_weights(
            Batch({"m": mask.double()}), split(Batch({"m": mask.double()}), [1, 3]), "m", 0
        )
    )
    empty = Batch({"mask": torch.tensor([[0, 0], [1, 0]])})
    assert "micro-batch 1 (1 row(s)) counts 0 tokens" in str(
        token_weights(empty, split(empty, [1, 1]), "mask", None)
    )


def test_masked_token_mean_is_green_with_weight_in_every_dtype(tmp_path: Path) -> None:
    groups = run_groups(masked_audit(tmp_path, "masked-regression-manual", {"weight": "mask"}))
    found = statuses(groups, "micro_batch")
    assert len(found) == 2 * len(MASKED_TENSORS)
    assert set(found.values()) == {"pass"}, found
    assert set(statuses(groups, "gradients").values()) == {"pass"}


def test_masked_token_mean_without_weight_is_an_error_that_names_weight(tmp_path: Path) -> None:
    """Rows are the wrong weights for a token mean: even autograd disagrees, so every tensor
    is an error (never a pass, never a fail) that says what to give."""
    groups = run_groups(masked_audit(tmp_path, "masked-regression-manual", {}))
    assert set(statuses(groups, "micro_batch").values()) == {"error"}
    summary = next(g for g in groups if g.check == "micro_batch").tensors[0]
    assert "not micro-batch invariant" in summary.errors[0]
    assert "give micro_batch `weight`" in summary.errors[0]


def test_configured_rows_in_a_token_count_passes_gradients_and_fails_micro_batch(
    tmp_path: Path,
) -> None:
    groups = run_groups(
        masked_audit(tmp_path, "masked-regression-bug-configured-rows", {"weight": "mask"})
    )
    for dtype in ("float64", "float32"):
        assert failing(groups, "gradients", dtype) == set()
        found = {t: s for (d, t), s in statuses(groups, "micro_batch").items() if d == dtype}
        assert found == dict.fromkeys(MASKED_TENSORS, "fail")


def test_weight_that_is_no_batch_tensor_is_an_error_per_tensor(tmp_path: Path) -> None:
    groups = run_groups(masked_audit(tmp_path, "masked-regression-manual", {"weight": "tokens"}))
    assert set(statuses(groups, "micro_batch").values()) == {"error"}
    summary = next(g for g in groups if g.check == "micro_batch").tensors[0]
    assert "weight 'tokens' is not a batch tensor (the batch has x, y, mask)" in summary.errors[0]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{weight: mask, reduction: sum}", "weight applies to reduction mean"),
        ("{ignore_index: -100}", "ignore_index needs weight"),
    ],
)
def test_weight_keys_that_cannot_apply_are_one_line_spec_errors(
    tmp_path: Path, body: str, message: str
) -> None:
    text = (REPO / "specs" / "charrnn.yaml").read_text(encoding="utf-8")
    path = tmp_path / "spec.yaml"
    path.write_text(text + f"checks:\n  micro_batch: {body}\n", encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_the_weight_examples_in_the_docs_load(tmp_path: Path) -> None:
    """docs/specs.md's `weight` block, both lines (the second commented out), is a valid
    `checks` section of the shipped spec."""
    import re

    text = (REPO / "docs" / "specs.md").read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "ignore_index" in b]
    base = (REPO / "specs" / "charrnn.yaml").read_text(encoding="utf-8")
    found = []
    for variant in (
        block,
        block.replace("  # micro_batch", "  micro_batch").replace(
            "  micro_batch: {splits: 3, weight: mask}", "  # (first line)", 1
        ),
    ):
        path = tmp_path / "spec.yaml"
        path.write_text(base + variant, encoding="utf-8")
        options = load_spec(path).spec.checks.micro_batch
        assert options is not None
        found.append((options.weight, options.ignore_index))
    assert found == [("mask", None), ("labels", -100)]
