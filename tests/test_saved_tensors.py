"""The saved_tensors check kind on model audits: per tensor, an explicit verdict that the
forward and two manual calls left what they read unchanged and that the second call
repeated the first; green on correct models in every dtype, red or an error naming the
culprit on each gallery bug. Also: the shipped specs with both invariance checks on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gradaudit.errors import SpecError
from gradaudit.results import GroupResult
from gradaudit.spec import load_spec
from tests.conftest import REPO, plan_for, run_groups, small_spec
from tests.test_micro_batch import CHARRNN_TENSORS, DTYPES, GALLERY, audit, failing, statuses

BELOW_LAST = {"h.1", "h.2", "h.3", "h.4", "C.weight", "U.weight", "U.bias", "W.weight"}


def errors(groups: list[GroupResult], check: str) -> dict[str, list[str]]:
    return {s.tensor: s.errors for g in groups if g.check == check for s in g.tensors}


def test_misspelt_key_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        audit(tmp_path, checks={"saved_tensors": {"rtoll": 0.1}})
    assert "\n" not in str(caught.value) and "spec.yaml:" in str(caught.value)


def test_plan_shows_bitwise_cases(tmp_path: Path) -> None:
    made = plan_for(audit(tmp_path, checks={"saved_tensors": {}}))
    cases = [c for c in made.cases if c.check == "saved_tensors"]
    assert [c.dtype for c in cases] == ["float32", "float64"]
    assert {t.name for t in cases[0].tensors} == CHARRNN_TENSORS
    assert {t.tol.describe() for t in cases[0].tensors} == {"exact (bitwise)"}
    loose = plan_for(audit(tmp_path, checks={"saved_tensors": {"rtol": 1e-6}}))
    tol = next(c for c in loose.cases if c.check == "saved_tensors").tensors[0].tol
    assert (tol.mode, tol.rtol) == ("allclose", 1e-6)


def test_correct_models_are_green_in_every_dtype(tmp_path: Path) -> None:
    for model, gradients in (("charrnn", "charrnn-bptt"), ("charrnn-saving", "charrnn-bptt-saved")):
        groups = run_groups(
            audit(
                tmp_path,
                plugins=[GALLERY],
                model={"plugin": model, "options": {"d_model": 8, "n_hidden": 16, "h0": 0.1}},
                gradients={"plugin": gradients},
                dtypes=DTYPES,
                checks={"saved_tensors": {}},
            )
        )
        found = statuses(groups, "saved_tensors")
        assert len(found) == 4 * len(CHARRNN_TENSORS)
        assert set(found.values()) == {"pass"}, (model, found)


def test_clobbered_saved_states_fail_only_saved_tensors(tmp_path: Path) -> None:
    """Right on the first call (the gradients case is green), wrong on the second: exactly
    the tensors that read the hidden states (all below the last step, and V.weight)."""
    groups = run_groups(
        audit(
            tmp_path,
            plugins=[GALLERY],
            model={
                "plugin": "charrnn-saving",
                "options": {"d_model": 8, "n_hidden": 16, "h0": 0.1},
            },
            gradients={"plugin": "charrnn-bptt-bug-clobbers-saved"},
            dtypes=["float64", "float32"],
            checks={"saved_tensors": {}},
        )
    )
    for dtype in ("float64", "float32"):
        assert failing(groups, "gradients", dtype) == set()
        assert failing(groups, "saved_tensors", dtype) == BELOW_LAST | {"V.weight"}
    assert {s for s in statuses(groups, "saved_tensors").values()} == {"pass", "fail"}


def test_a_workspace_kept_between_calls_is_named(tmp_path: Path) -> None:
    groups = run_groups(
        audit(
            tmp_path,
            plugins=[GALLERY],
            gradients={"plugin": "charrnn-bptt-bug-accumulates"},
            dtypes=["float64"],
            batches={"split": "train", "count": 1, "size": 4, "seed": 3},
            checks={"saved_tensors": {}},
        )
    )
    assert failing(groups, "gradients", "float64") == set()  # one batch: the first call
    found = statuses(groups, "saved_tensors")
    # a change to something every tensor may read is an error of every tensor
    assert set(found.values()) == {"error"} and len(found) == len(CHARRNN_TENSORS)
    for messages in errors(groups, "saved_tensors").values():
        assert "model attribute `dC_workspace` changed in place" in messages[0]


def test_an_overwritten_intermediate_is_an_error_of_every_case(tmp_path: Path) -> None:
    """The pass's own guard fails the batch before any check kind runs; saved_tensors still
    reports each of its tensors, with the guard's message naming the intermediate."""
    groups = run_groups(
        audit(
            tmp_path,
            plugins=[GALLERY],
            gradients={"plugin": "charrnn-bptt-bug-overwrites-logits"},
            dtypes=["float64"],
            checks={"saved_tensors": {}},
        )
    )
    for check in ("gradients", "saved_tensors"):
        assert set(statuses(groups, check).values()) == {"error"}
        assert all(
            "modified intermediate logits in place" in m[0] for m in errors(groups, check).values()
        )


PARAM_IN_FORWARD = """
from gradaudit import hookimpl
from gradaudit_charrnn.model import CharRNN


class Decaying(CharRNN):
    def forward(self, inputs, targets):
        self.V.weight.data.mul_(0.999)  # the bug: weight decay in the forward, in place
        return super().forward(inputs, targets)


@hookimpl
def register_models(register):
    register("charrnn-decaying", lambda vocab_size, block_size=None, **o: Decaying(vocab_size, **o))
"""


def test_a_parameter_changed_by_the_forward_is_named(tmp_path: Path) -> None:
    """Autograd and the manual gradient both see the decayed weight (the gradients case is
    green); only saved_tensors compares the parameters before and after the forward."""
    plugin = tmp_path / "decaying.py"
    plugin.write_text(PARAM_IN_FORWARD, encoding="utf-8")
    groups = run_groups(
        audit(
            tmp_path,
            plugins=[str(plugin)],
            model={"plugin": "charrnn-decaying", "options": {"d_model": 8, "n_hidden": 16}},
            dtypes=["float64"],
            checks={"saved_tensors": {}},
        )
    )
    assert failing(groups, "gradients", "float64") == set()
    found = statuses(groups, "saved_tensors")
    assert found.pop(("float64", "V.weight")) == "error"
    assert set(found.values()) == {"pass"}
    message = errors(groups, "saved_tensors")["V.weight"][0]
    assert "V.weight changed in place by the forward" in message


def test_shipped_specs_with_both_checks_in_every_dtype() -> None:
    """specs/charrnn.yaml (batch 32, block 8: 15 tensors) green with both checks on in all
    four dtypes and the default tolerances; mlp-batchnorm green on saved_tensors (micro_batch
    is not for batch statistics: see test_micro_batch)."""
    checks = "checks={micro_batch: {splits: 3}, saved_tensors: {}}"
    sets = ("batches.count=2", "devices=[cpu]", f"dtypes=[{', '.join(DTYPES)}]")
    charrnn = run_groups(load_spec(REPO / "specs" / "charrnn.yaml", (*sets, checks)))
    for check in ("gradients", "micro_batch", "saved_tensors"):
        found = statuses(charrnn, check)
        assert len(found) == 4 * 15 and set(found.values()) == {"pass"}, (check, found)
    mlp_sets = (*sets, "checks={saved_tensors: {}}")
    mlp = run_groups(load_spec(REPO / "specs" / "mlp-batchnorm.yaml", mlp_sets))
    found = statuses(mlp, "saved_tensors")
    assert len(found) == 4 * 19 and set(found.values()) == {"pass"}


def test_small_spec_is_what_the_other_tests_use() -> None:
    assert yaml.safe_dump(small_spec())  # the shared spec stays serialisable
