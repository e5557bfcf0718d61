"""`--shard auto` (gradaudit.ci.environment): each CI's variables and base, the GitLab job
without `parallel:`, and a one-line error for everything else."""

from __future__ import annotations

import pytest

from gradaudit.ci.environment import (
    PROVIDERS,
    ShardEnvironmentError,
    shard_from_env,
    shard_source,
)

# (index variable, total variable, the first job's index): bases from each CI's docs.
CIS = {
    "gitlab": ("CI_NODE_INDEX", "CI_NODE_TOTAL", 1),
    "circleci": ("CIRCLE_NODE_INDEX", "CIRCLE_NODE_TOTAL", 0),
    "buildkite": ("BUILDKITE_PARALLEL_JOB", "BUILDKITE_PARALLEL_JOB_COUNT", 0),
    "azure": ("SYSTEM_JOBPOSITIONINPHASE", "SYSTEM_TOTALJOBSINPHASE", 1),
}


def test_the_table_matches_the_providers() -> None:
    assert {(p.index, p.total, p.base) for p in PROVIDERS} == set(CIS.values())


@pytest.mark.parametrize("ci", CIS)
def test_every_job_of_four_gets_its_own_shard(ci: str) -> None:
    index, total, base = CIS[ci]
    shards = [shard_from_env({index: str(base + i), total: "4"}) for i in range(4)]
    assert shards == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize("ci", CIS)
def test_an_index_outside_the_range_is_an_error(ci: str) -> None:
    index, total, base = CIS[ci]
    for bad in (base - 1, base + 4):
        with pytest.raises(ShardEnvironmentError, match="must be within") as caught:
            shard_from_env({index: str(bad), total: "4"})
        assert f"{base}..{base + 3}" in str(caught.value)


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"CIRCLE_NODE_INDEX": "1"}, "CIRCLE_NODE_TOTAL is not set but CIRCLE_NODE_INDEX is"),
        ({"CIRCLE_NODE_TOTAL": "4"}, "CIRCLE_NODE_TOTAL is set but CIRCLE_NODE_INDEX is not"),
        ({"CI_NODE_TOTAL": "4"}, "CI_NODE_TOTAL is set but CI_NODE_INDEX is not"),
        ({"BUILDKITE_PARALLEL_JOB": "x", "BUILDKITE_PARALLEL_JOB_COUNT": "2"}, "not a whole"),
        ({"BUILDKITE_PARALLEL_JOB": "0", "BUILDKITE_PARALLEL_JOB_COUNT": "2.0"}, "not a whole"),
        ({"SYSTEM_JOBPOSITIONINPHASE": "1", "SYSTEM_TOTALJOBSINPHASE": "0"}, "at least 1"),
        (
            {
                "CI_NODE_INDEX": "2",
                "CI_NODE_TOTAL": "4",
                "CIRCLE_NODE_INDEX": "0",
                "CIRCLE_NODE_TOTAL": "4",
            },
            "two CIs disagree",
        ),
    ],
)
def test_invalid_values_are_one_line_errors(env: dict[str, str], says: str) -> None:
    with pytest.raises(ShardEnvironmentError) as caught:
        shard_from_env(env)
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert str(caught.value).startswith("--shard auto: ")


def test_nothing_set_names_every_ci_and_the_github_matrix() -> None:
    with pytest.raises(ShardEnvironmentError) as caught:
        shard_from_env({"GITHUB_ACTIONS": "true", "CI": "true", "CI_NODE_INDEX": " "})
    message = str(caught.value)
    assert all(index in message for index, _, _ in CIS.values())
    assert "--shard ${{ matrix.shard }}/N" in message and "\n" not in message
    assert isinstance(caught.value, ValueError)


def test_a_gitlab_job_without_parallel_is_the_whole_run() -> None:
    """GitLab sets CI_NODE_TOTAL=1 and no CI_NODE_INDEX on a job without `parallel:`."""
    assert shard_from_env({"CI_NODE_TOTAL": "1"}) == (1, 1)
    # Azure and CircleCI set both variables on such a job.
    azure = {"SYSTEM_JOBPOSITIONINPHASE": "1", "SYSTEM_TOTALJOBSINPHASE": "1"}
    assert shard_from_env(azure) == (1, 1)
    assert shard_from_env({"CIRCLE_NODE_INDEX": "0", "CIRCLE_NODE_TOTAL": "1"}) == (1, 1)


def test_agreeing_cis_and_where_the_shard_came_from() -> None:
    env = {"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "3", "CIRCLE_NODE_INDEX": "1",
           "CIRCLE_NODE_TOTAL": "3", "UNRELATED": "x"}  # fmt: skip
    k, n, where = shard_source(env)
    assert (k, n) == (2, 3) and where.startswith("GitLab CI CI_NODE_INDEX='2'")
    buildkite = {"BUILDKITE_PARALLEL_JOB": " 3 ", "BUILDKITE_PARALLEL_JOB_COUNT": "4"}
    assert shard_from_env(buildkite) == (4, 4)
