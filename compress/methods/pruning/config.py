"""Settings of gradual pruning: the method (unstructured, N:M or channels), its goal (a sparsity, a share of the MACs
or a latency), the layers in scope, the schedule and the fine-tuning. Plain pydantic, no torch, so a pipeline file is
validated without it."""
from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import Field, PositiveFloat, field_validator, model_validator

from ...config import Count, TrainConfig
from ...errors import shown
from ..distill.config import SelfDistillation
from .schedule import ScheduleConfig

METHOD_KEYS = {"target_macs": "channel", "target_latency_ms": "channel", "importance": "channel", "round_to": "channel",
               "round_to_min": "channel", "drop_blocks": "channel", "fill_budget": "channel", "global_ranking": "magnitude",
               "pattern": "nm"}  # keys that apply to one method only


class PruneSettings(TrainConfig):
    """What to prune, how far, when, and how the fine-tuning learns; checked for consistency across the methods."""

    method: Literal["magnitude", "nm", "channel"] = Field(
        "magnitude", description="magnitude: unstructured weights; nm: N:M semi-structured (TensorRT 2:4); channel: whole channels")
    final_sparsity: Optional[float] = Field(
        None, description="magnitude: share of weights zeroed (default 0.5); nm: set by `pattern`; channel: share of each "
                          "layer's channels removed (default 0.5 unless target_macs or target_latency_ms)")
    target_macs: Optional[float] = Field(None, description="channel: share of the model's MACs to keep, instead of final_sparsity")
    target_latency_ms: Optional[Union[PositiveFloat, Literal["budget"]]] = Field(
        None, description="channel: batch-1 latency on the target (cost model, its first preferred precision); 'budget': the target's budget")
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig, description="the pruning schedule")
    lr_schedule: Literal["cosine", "constant", "step"] = Field("cosine", description="per-step learning-rate schedule")
    include: list[str] = Field(["*"], description="name patterns (fnmatch) of the conv/linear layers in scope")
    exclude: Optional[list[str]] = Field(None, description="name patterns kept unpruned; default: the first layer and the "
                                                           "classifier (channel: the classifier)")
    global_ranking: bool = Field(False, description="magnitude: rank weights across all layers instead of per layer")
    pattern: str = Field("2:4", description="nm: at most N non-zeros in every M weights along the input dimension")
    importance: Literal["l1", "l2", "bn_scale", "taylor"] = Field("l2", description="channel: how channels are ranked")
    round_to: Optional[Count] = Field(None, description="channel: channel counts become multiples of this; default: "
                                                              "the target's channel_alignment")
    round_to_min: Optional[Count] = Field(None, description="channel: layers at or below round_to channels (a bottleneck "
                                                            "already narrower than the alignment) round to this instead, "
                                                            "so they can still shrink; must be below round_to")
    fill_budget: bool = Field(True, description="channel, with target_macs or target_latency_ms: after the uniform ratio that "
                              "meets the goal, widen the most-cut channel groups one alignment unit at a time while the goal "
                              "still holds, so rounding to round_to does not leave budget unspent")
    drop_blocks: Optional[Union[Count, list[str]]] = Field(
        None, description="channel: also remove whole blocks (depth) on the same schedule: module names, or a count to take "
                          "the costliest on the target (by MACs without one); a block must return its input's shape, as a "
                          "residual block does. MACs and latency goals count the model without them")
    lr: float = Field(0.05, gt=0, description="peak learning rate of the fine-tuning")
    distill: Optional[SelfDistillation] = Field(None, description="learn the unpruned model's soft predictions while pruning "
                                            "({} for the defaults); omit to fine-tune on the labels only")

    @field_validator("final_sparsity")
    @classmethod
    def _sparsity(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not 0 <= v < 1:
            raise ValueError(f"must be in [0, 1), got {v}")
        return v

    @field_validator("target_macs")
    @classmethod
    def _macs(cls, v: Optional[float]) -> Optional[float]:
        if v is not None and not 0 < v < 1:
            raise ValueError(f"must be the share of MACs to keep, in (0, 1), got {v}")
        return v

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, v: str) -> str:
        n, _, m = v.partition(":")
        if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
            raise ValueError(f"must be 'N:M' with 0 < N < M, e.g. '2:4', got {shown(v)}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "PruneSettings":
        for key, method in METHOD_KEYS.items():
            if key in self.model_fields_set and self.method != method:
                raise ValueError(f"{key} applies to method {method} only, not {self.method}")
        goals = [k for k in ("final_sparsity", "target_macs", "target_latency_ms") if getattr(self, k) is not None]
        if len(goals) > 1:
            raise ValueError(f"give one of final_sparsity, target_macs, target_latency_ms, not {' and '.join(goals)}")
        if self.method == "nm" and self.final_sparsity is not None and abs(self.final_sparsity - self.sparsity) > 1e-9:
            raise ValueError(f"final_sparsity: pattern {self.pattern} means sparsity {self.sparsity:g}; leave final_sparsity out")
        if self.sparsity is not None and self.schedule.initial_sparsity > self.sparsity:
            raise ValueError(f"schedule.initial_sparsity {self.schedule.initial_sparsity} is above the final sparsity {self.sparsity}")
        return self

    @property
    def nm(self) -> tuple[int, int]:
        n, m = self.pattern.split(":")
        return int(n), int(m)

    @property
    def sparsity(self) -> Optional[float]:
        """The final sparsity, or None when a MACs or latency target decides it."""
        if self.method == "nm":
            return 1 - self.nm[0] / self.nm[1]
        if self.target_macs is not None or self.target_latency_ms is not None:
            return None
        return 0.5 if self.final_sparsity is None else self.final_sparsity

    def train_config(self) -> TrainConfig:
        return TrainConfig(**self.model_dump(include=set(TrainConfig.model_fields) - {"schedule"}), schedule=self.lr_schedule)
