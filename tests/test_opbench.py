"""benchmarks/opbench: the harness on two ops (one with OpInfo samples, one hand-written).

The correct ops must be green under gradcheck and the assert_close test on their own samples
(a red correct op would make every "caught" of its bugs meaningless), and each tool must
catch the bug it has to: a backward hard-wired to the last dim fails gradcheck and
assert_close on OpInfo's dim=0 samples; one that reads the upstream gradient as if
contiguous only fails gradaudit's layout variants (OpInfo samples are contiguous); an
odd-size tail fails all three.
"""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))

from opbench import run as opbench  # noqa: E402
from opbench.bugs import BUGS, CLASSES  # noqa: E402
from opbench.cases import BY_NAME, OPS  # noqa: E402


def test_bugs_are_tagged_and_cover_the_classes():
    assert {bug.kind for bug in BUGS} == set(CLASSES)
    assert all(bug.op in BY_NAME for bug in BUGS)
    assert len({bug.name for bug in BUGS}) == len(BUGS)
    assert sum(bug.kind == "argument" for bug in BUGS) >= 5
    assert sum(bug.kind == "accumulation" for bug in BUGS) >= 6
    assert len(OPS) == 12 and 40 <= len(BUGS) <= 46
    for op in OPS:
        assert 3 <= sum(bug.op == op.name for bug in BUGS) <= 4, op.name


def test_two_ops_correct_green_and_bugs_caught_by_the_right_tool():
    bugs = ["softmax-dim-last", "softmax-grad-row-major", "swiglu-tail"]
    data = opbench.run(ops=["softmax", "swiglu"], bugs=bugs, log=None)
    verdicts = {r["name"]: r["verdicts"] for r in data["results"]}
    assert set(verdicts) == {"softmax", "swiglu", *bugs}
    for op in ("softmax", "swiglu"):
        for tool in ("gradcheck", "assert_close"):
            assert verdicts[op][tool]["failing"] == [], (op, tool, verdicts[op][tool]["detail"])
    caught = {name: {t for t, v in vs.items() if v["caught"]} for name, vs in verdicts.items()}
    assert caught["softmax-dim-last"] >= {"gradcheck", "assert_close"}
    assert caught["softmax-grad-row-major"] == {"gradaudit"}
    assert caught["swiglu-tail"] == {"gradcheck", "assert_close", "gradaudit"}
    failing = {
        case.split("/")[0] for case in verdicts["softmax-grad-row-major"]["gradaudit"]["failing"]
    }
    assert "transposed" in failing  # the non-contiguous upstream gradient
    assert data["summary"]["gradcheck"]["caught"] == 2
    assert data["samples"]["swiglu"]["source"] == "hand-written"
    assert data["samples"]["softmax"]["source"] == "OpInfo softmax"
    table = opbench.tables(data)
    assert "| bugs caught | 2/3 | 2/3 |" in table
    assert "| softmax-grad-row-major | layout | – | – | caught |" in table
