"""`--shard auto`: this job's shard K/N (K from 1, as `--shard K/N` takes it) from the
variables a CI sets in each copy of a parallel job.

| CI              | index variable              | base | total variable                 |
|-----------------|-----------------------------|------|--------------------------------|
| GitLab CI       | `CI_NODE_INDEX`             | 1    | `CI_NODE_TOTAL`                |
| CircleCI        | `CIRCLE_NODE_INDEX`         | 0    | `CIRCLE_NODE_TOTAL`            |
| Buildkite       | `BUILDKITE_PARALLEL_JOB`    | 0    | `BUILDKITE_PARALLEL_JOB_COUNT` |
| Azure Pipelines | `SYSTEM_JOBPOSITIONINPHASE` | 1    | `SYSTEM_TOTALJOBSINPHASE`      |

Sources for the bases:
- GitLab, https://docs.gitlab.com/ci/variables/predefined_variables/ and the `parallel:`
  keyword: `parallel: 5` makes jobs `test 1/5` .. `test 5/5`, CI_NODE_INDEX is "Index of the
  job in the job set" (1..N) and is unset without `parallel:`, while CI_NODE_TOTAL is then 1
  ("If the job is not parallelized, this variable is set to 1"). So CI_NODE_TOTAL=1 without an
  index is GitLab's plain job: shard 1/1, the whole run.
- CircleCI, https://circleci.com/docs/variables/ ("Built-in environment variables"):
  CIRCLE_NODE_INDEX "ranges from 0 to (CIRCLE_NODE_TOTAL - 1)".
- Buildkite, https://buildkite.com/docs/pipelines/environment-variables and Buildkite's own
  example https://github.com/buildkite/pytest-parallel-example ("$BUILDKITE_PARALLEL_JOB starts
  at 0 but pytest-split expects --group to start at 1", so it passes JOB + 1).
- Azure Pipelines, https://learn.microsoft.com/azure/devops/pipelines/test/parallel-testing-any-test-runner:
  `strategy: {parallel: N}` adds System.JobPositionInPhase and System.TotalJobsInPhase to each
  job (in the environment upper-cased, dots as underscores); positions run 1..N (a job
  without `parallel` shows SYSTEM_JOBPOSITIONINPHASE=1, SYSTEM_TOTALJOBSINPHASE=1, and
  Microsoft's sample slicers take test `position - 1`).

GitHub Actions sets no such variables: run one job per shard with a matrix and pass the shard
explicitly, `strategy: {matrix: {shard: [1, 2, 3, 4]}}` and
`--shard ${{ matrix.shard }}/4`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

GITHUB_HINT = "on GitHub Actions use a matrix: --shard ${{ matrix.shard }}/N"


class ShardEnvironmentError(ValueError):
    """`--shard auto` found no shard, or invalid values; the message is one line."""


@dataclass(frozen=True)
class Provider:
    name: str
    index: str
    total: str
    base: int  # the index of the first job


PROVIDERS = (
    Provider("GitLab CI", "CI_NODE_INDEX", "CI_NODE_TOTAL", 1),
    Provider("CircleCI", "CIRCLE_NODE_INDEX", "CIRCLE_NODE_TOTAL", 0),
    Provider("Buildkite", "BUILDKITE_PARALLEL_JOB", "BUILDKITE_PARALLEL_JOB_COUNT", 0),
    Provider("Azure Pipelines", "SYSTEM_JOBPOSITIONINPHASE", "SYSTEM_TOTALJOBSINPHASE", 1),
)


def shard_from_env(environ: Mapping[str, str]) -> tuple[int, int]:
    """(K, N) for `--shard K/N`, K counted from 1, from the first CI whose variables are set.

    ShardEnvironmentError when no CI's variables are set, when one of a pair is missing or
    not a whole number, when the index is out of range, or when two CIs' variables are set
    and disagree.
    """
    k, n, _ = shard_source(environ)
    return k, n


def shard_source(environ: Mapping[str, str]) -> tuple[int, int, str]:
    """(K, N, where it came from), e.g. (2, 4, "CircleCI CIRCLE_NODE_INDEX=1 ...")."""
    found: list[tuple[int, int, str]] = []
    for provider in PROVIDERS:
        shard = _read(provider, environ)
        if shard is not None:
            found.append(shard)
    if not found:
        names = "; ".join(f"{p.name} {p.index}/{p.total}" for p in PROVIDERS)
        raise ShardEnvironmentError(
            f"--shard auto: no CI parallelism variables are set ({names}); {GITHUB_HINT}"
        )
    first = found[0]
    for other in found[1:]:
        if other[:2] != first[:2]:
            raise ShardEnvironmentError(
                f"--shard auto: two CIs disagree: {first[2]} is shard {first[0]}/{first[1]}, "
                f"{other[2]} is shard {other[0]}/{other[1]}; pass --shard K/N"
            )
    return first


def _read(provider: Provider, environ: Mapping[str, str]) -> tuple[int, int, str] | None:
    index_text = environ.get(provider.index, "").strip()
    total_text = environ.get(provider.total, "").strip()
    if not index_text and not total_text:
        return None
    where = f"{provider.name} {provider.index}={index_text!r} {provider.total}={total_text!r}"
    total = _whole(provider.total, total_text, provider)
    if total < 1:
        raise ShardEnvironmentError(f"--shard auto: {where}: the total must be at least 1")
    if not index_text:
        if provider.base == 1 and provider.index == "CI_NODE_INDEX" and total == 1:
            return 1, 1, f"{provider.name} (no parallel: {provider.total}=1)"
        raise ShardEnvironmentError(
            f"--shard auto: {where}: {provider.total} is set but {provider.index} is not"
        )
    index = _whole(provider.index, index_text, provider)
    first, last = provider.base, provider.base + total - 1
    if not first <= index <= last:
        raise ShardEnvironmentError(
            f"--shard auto: {where}: the index must be within {first}..{last} "
            f"({provider.name} counts from {provider.base})"
        )
    return index - provider.base + 1, total, where


def _whole(name: str, text: str, provider: Provider) -> int:
    if not text:
        raise ShardEnvironmentError(
            f"--shard auto: {provider.name}: {name} is not set but "
            f"{provider.index if name == provider.total else provider.total} is"
        )
    try:
        return int(text, 10)
    except ValueError:
        raise ShardEnvironmentError(
            f"--shard auto: {provider.name}: {name}={text!r} is not a whole number"
        ) from None
