"""The sparsity schedule (Zhu & Gupta, 2017) and its settings: when pruning happens and how far it has got. Plain
Python, no torch, so a pipeline file is validated without it."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator, model_validator

from ...config import Count, Natural, Strict
from ...errors import ConfigError

Event = tuple[int, float]  # (training step, sparsity reached at that step)


class ScheduleConfig(Strict):
    """When pruning happens: from `start` to `end`, every `frequency` training steps."""

    kind: Literal["cubic", "linear", "one_shot"] = Field("cubic", description="cubic: Zhu & Gupta; one_shot: all at `start`, then fine-tune")
    initial_sparsity: float = Field(0.0, ge=0, lt=1, description="sparsity set at the first pruning step")
    start: float = Field(0.0, description="first pruning step, as a fraction of the stage's training steps")
    end: float = Field(0.3, description="step where the final sparsity is reached, as a fraction (1 = the last step); the rest "
                                        "of the stage recovers accuracy")
    start_step: Optional[Natural] = Field(None, description="first pruning step as a step number; replaces `start`")
    end_step: Optional[Count] = Field(None, description="last pruning step as a step number; replaces `end`")
    frequency: Count = Field(50, description="training steps between pruning steps", json_schema_extra={"smoke": 2})

    @field_validator("start", "end")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 <= v <= 1:
            raise ValueError(f"must be a fraction of the stage's training steps in [0, 1] (1 = the end of training), got {v}; "
                             f"use start_step/end_step for step numbers")
        return v

    @model_validator(mode="after")
    def _order(self) -> "ScheduleConfig":
        if self.kind != "one_shot" and self.start_step is None and self.end_step is None and self.start >= self.end:
            raise ValueError(f"start ({self.start}) must come before end ({self.end})")
        return self

    def steps(self, total: int) -> tuple[int, int]:
        """(start, end) as step numbers of a stage that trains for `total` steps (one_shot: both are its one step)."""
        start = self.start_step if self.start_step is not None else round(self.start * total)
        end = start if self.kind == "one_shot" else self.end_step if self.end_step is not None else round(self.end * total)
        if end > total:
            raise ConfigError(f"schedule ends at step {end}, after training ends (step {total}); lower start_step/end_step or add epochs")
        if self.kind != "one_shot" and start >= end:
            raise ConfigError(f"schedule starts at step {start}, not before its end at step {end}")
        return start, end

    def events(self, final: float, total: int) -> list[Event]:
        """The pruning steps of a stage of `total` training steps that prune something: (step, sparsity)."""
        return [(t, v) for t, v in schedule(self.kind, self.initial_sparsity, final, *self.steps(total), self.frequency) if v > 0]

    def ramp(self, total: int):
        """The share of the schedule done at a step, from 0 to 1 (block dropping fades blocks out along it)."""
        start, end = self.steps(total)
        return lambda step: sparsity_at(step, self.kind, 0.0, 1.0, start, end)


def sparsity_at(step: int, kind: str, initial: float, final: float, start: int, end: int) -> float:
    """Target sparsity at `step`: Zhu & Gupta's cubic ramp, a linear ramp, or one_shot (`final` from `start` on)."""
    if step < start:
        return 0.0
    if kind == "one_shot" or step >= end:
        return final
    remaining = 1 - (step - start) / (end - start)
    return final + (initial - final) * (remaining if kind == "linear" else remaining**3)


def schedule(kind: str, initial: float, final: float, start: int, end: int, frequency: int) -> list[Event]:
    """Pruning steps `frequency` apart from `start`, always ending at `end` (one_shot: `start` only), with their sparsity."""
    steps = [start] if kind == "one_shot" else sorted({*range(start, end, frequency), end})
    return [(t, sparsity_at(t, kind, initial, final, start, end)) for t in steps]
