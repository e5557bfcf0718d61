"""The spec of a model audit (and of a sharded one: a model spec with `distributed:`).

A model plugin, its manual gradient, a data plugin, how batches are drawn, devices, dtypes,
the tensors to audit, tolerances, extra checks and declared post-processing. Torch-free.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from gradaudit.postprocess import Rule
from gradaudit.spec.common import (
    Dtype,
    Glob,
    NonNegativeFloat,
    PluginRef,
    PositiveInt,
    SpecBase,
    Strict,
)


class ModelRef(PluginRef):
    """The model plugin, its options, and the seed its weights are drawn with (default:
    `batches.seed`, as before model.seed existed, so existing reports keep their numbers)."""

    seed: int | None = None


class Batches(Strict):
    """How batches are drawn; batch k is seeded with `seed + k`.

    `split: val` with `count` or `size` left out means every batch, or every window in
    one batch (the notebook's exhaustive val batch); `train` needs both."""

    split: Literal["train", "val"] = "train"
    count: PositiveInt | None = 8
    size: PositiveInt | None = 32
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _val_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if "block_size" in data:
                raise ValueError(
                    "block_size is an option of the text data now: "
                    "move it to data.options.block_size"
                )
            if data.get("split") == "val":
                data = {"count": None, "size": None, **data}
        return data

    @model_validator(mode="after")
    def _train_needs_sizes(self) -> Batches:
        if self.split == "train" and (self.count is None or self.size is None):
            raise ValueError("split 'train' needs both count and size")
        return self


class Distributed(Strict):
    """Run the audit sharded over `world_size` ranks, launched by torchrun.

    `port`: the rendezvous port; unset means torchrun's --standalone, which lets the OS pick
    a free one. `replicas`: how replicated gradients must agree across ranks: `exact`
    (bitwise, what an all-reduce gives) or `tolerance` (the tensor's allclose rtol/atol).
    """

    world_size: Annotated[int, Field(ge=1, le=1024)]
    backend: Literal["gloo", "nccl"] = "gloo"
    port: Annotated[int, Field(ge=1, le=65535)] | None = None
    replicas: Literal["exact", "tolerance"] = "exact"


class FiniteDifference(Strict):
    """Central differences of the loss along random parameter directions, in float64."""

    directions: PositiveInt = 8
    batches: PositiveInt = 1  # the first N batches (of this shard)
    eps: Annotated[float, Field(gt=0)] = 1e-6
    rtol: NonNegativeFloat = 1e-6
    atol: NonNegativeFloat = 1e-12


class Repeat(Strict):
    """Run the manual gradient `count` times on the same inputs; results must agree."""

    count: Annotated[int, Field(ge=2)] = 2
    rtol: NonNegativeFloat = 0.0
    atol: NonNegativeFloat = 0.0


class MicroBatch(Strict):
    """The batch's gradient equals its micro-batches' manual gradients, combined.

    Keys as op audits' (gradaudit.spec.op.MicroBatch); a model's loss is a scalar, so
    `reduction` is how it reduces over rows: mean (weights rows_i/N) or sum. A loss that
    is a mean over tokens (a padding mask, labels with an ignore index) weighs each
    micro-batch by its tokens: `weight` names the batch tensor that counts them (its sum
    over the micro-batch's rows; with `ignore_index`, its entries not equal to it)."""

    splits: Annotated[int, Field(ge=2)] = 2
    reduction: Literal["sum", "mean"] = "mean"
    weight: Annotated[str, Field(min_length=1)] | None = None
    ignore_index: int | None = None

    @model_validator(mode="after")
    def _weight_is_for_a_mean(self) -> MicroBatch:
        if self.weight is not None and self.reduction != "mean":
            raise ValueError(
                "weight applies to reduction mean (a sum adds micro-batches as they are)"
            )
        if self.ignore_index is not None and self.weight is None:
            raise ValueError("ignore_index needs weight: the batch tensor whose entries it ignores")
        return self


class SavedTensors(Strict):
    """Forward and manual gradient leave what they read unchanged; a second manual call
    on the same forward repeats the first (bitwise, unless rtol/atol are given)."""

    rtol: NonNegativeFloat = 0.0
    atol: NonNegativeFloat = 0.0


class Checks(Strict):
    """Extra checks beyond manual-vs-autograd, each reported as its own test cases. A check
    kind a plugin registers takes its options under its own name (`NAME: {...}`): they
    reach it as `spec.checks.options(NAME)`; a name no plugin registers is an error at its
    line when the target loads."""

    model_config = ConfigDict(extra="allow", strict=True, frozen=True)

    finite_difference: FiniteDifference | None = None
    repeat: Repeat | None = None
    micro_batch: MicroBatch | None = None
    saved_tensors: SavedTensors | None = None

    @model_validator(mode="after")
    def _plugin_options_are_mappings(self) -> Checks:
        for name, value in (self.model_extra or {}).items():
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{name}: a check's options are a mapping, or null for none")
        return self

    @property
    def plugin_checks(self) -> list[str]:
        """The names of plugin check kinds the spec asks for."""
        return list(self.model_extra or {})

    def options(self, name: str) -> dict[str, Any] | None:
        """A plugin check kind's options ({} when given none), None when not asked for."""
        extra = self.model_extra or {}
        return None if name not in extra else dict(extra[name] or {})


class Spec(SpecBase):
    """One audit: a model, its manual gradients, data, and where and how to check them."""

    model: ModelRef
    gradients: PluginRef
    data: PluginRef = Field(default_factory=lambda: PluginRef(plugin="text"))
    batches: Batches = Field(default_factory=Batches)
    dtypes: list[Dtype] = Field(default_factory=lambda: ["float32"], min_length=1)  # type: ignore[arg-type]
    # Globs of tensor names; "!glob" excludes what an earlier glob included.
    tensors: list[Glob] = Field(default_factory=lambda: ["*"], min_length=1)
    checks: Checks = Field(default_factory=Checks)
    # Transformations the manual code applies on purpose (clip to +-c, a scale), applied to
    # autograd's reference and the float64 truth too, so such code is audited as written.
    postprocess: list[Rule] = Field(default_factory=list)
    distributed: Distributed | None = None
    # Custom autograd.Functions in the model's graph and the op spec (a path relative to
    # this file) that audits each: `gradaudit run` runs those op specs with this one, and
    # a Function so audited no longer needs finite differences through it.
    functions: dict[Annotated[str, Field(min_length=1)], Annotated[str, Field(min_length=1)]] = (
        Field(default_factory=dict)
    )

    @property
    def model_seed(self) -> int:
        """The seed of the model's initial weights."""
        return self.batches.seed if self.model.seed is None else self.model.seed
