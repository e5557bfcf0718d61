"""Declared post-processing: rules parse strictly and transform only the tensors they name."""

from __future__ import annotations

import pydantic
import pytest
import torch
import yaml

from gradaudit import postprocess


def rules(text: str) -> list[postprocess.Rule]:
    return postprocess.parse(yaml.safe_load(text))


def test_parse_the_spec_form() -> None:
    parsed = rules('[{clip: 5, tensors: ["*"]}, {scale: 0.5, tensors: ["W*", "b"]}]')
    assert [r.describe() for r in parsed] == ["clip ±5 on *", "scale 0.5 on W*, b"]
    assert postprocess.parse(None) == []
    assert rules("[{clip: 1.5}]")[0].tensors == ["*"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[{clip: 1, scale: 2}]", "exactly one"),
        ("[{tensors: [a]}]", "exactly one"),
        ("[{clip: 0}]", "non-zero"),
        ("[{clip: -5}]", "positive"),
        ("[{scale: .nan}]", "finite"),
        ("[{clip: 5, tensor: [a]}]", "Extra inputs"),
        ("[{clip: 5, tensors: []}]", "at least 1"),
        ("[{clip: 5, tensors: ['']}]", "at least 1 character"),
        ("{clip: 5}", "list"),
        ("[{clip: '5'}]", "valid number"),
    ],
)
def test_bad_rules_are_rejected(text: str, message: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=message):
        rules(text)


def test_apply_in_order_and_only_to_matching_names() -> None:
    parsed = rules("[{scale: 2, tensors: [W*]}, {clip: 3, tensors: ['*']}]")
    t = torch.tensor([-4.0, -1.0, 1.0, 2.0, float("nan")])
    out, clipped = postprocess.apply_counted("W1", t, parsed)
    assert torch.equal(out[:4], torch.tensor([-3.0, -2.0, 2.0, 3.0])) and out[4].isnan()
    assert clipped == 2  # -8 and 4 after scaling
    out, clipped = postprocess.apply_counted("b", t, parsed)
    assert torch.equal(out[:4], torch.tensor([-3.0, -1.0, 1.0, 2.0])) and clipped == 1
    assert postprocess.apply("b", t, []) is t
    assert not postprocess.applies("b", rules("[{clip: 1, tensors: [W]}]"))


def test_saturation() -> None:
    assert postprocess.saturated(3, 4) is None
    assert postprocess.saturated(0, 0) is None
    assert "only signs" in (postprocess.saturated(4, 4) or "")
