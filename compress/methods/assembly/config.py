"""Settings of NN-Factory assembly: the scenarios (a budget, a class subset, a target), the generator's training and
the evolutionary-search baseline. Plain pydantic, no torch, so a pipeline file is validated without it."""
from __future__ import annotations

from typing import Optional

from pydantic import Field, PositiveFloat, field_validator, model_validator

from ...config import Name, Natural, Strict

BUDGET_KEYS = ("latency_ms", "macs", "size_kb")


class ScenarioConfig(Strict):
    """One model to assemble: exactly one budget, optionally a class subset and the target it is for."""

    name: Optional[Name] = Field(None, description="the variant's name; default from the budget, e.g. macs0.3-c0-2-5")
    latency_ms: Optional[PositiveFloat] = Field(None, description="batch-1 latency budget on the target (cost model), ms")
    macs: Optional[float] = Field(None, gt=0, le=1, description="MACs budget as a share of the full supernet's")
    size_kb: Optional[PositiveFloat] = Field(None, description="weights size budget on the target's precision, kB")
    classes: Optional[list[Natural]] = Field(None, min_length=2, max_length=100_000,
                                             description="the classes the model predicts (its head keeps only their rows)")
    target: Optional[Name] = Field(None, description="the run target a latency or size budget is on; default: the first")

    @model_validator(mode="after")
    def _one_budget(self) -> "ScenarioConfig":
        given = [k for k in BUDGET_KEYS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one budget of {', '.join(BUDGET_KEYS)}; got {', '.join(given) or 'none'}")
        return self

    @field_validator("classes")
    @classmethod
    def _classes(cls, v: Optional[list[int]]) -> Optional[list[int]]:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("lists a class twice")
        return v

    @property
    def kind(self) -> str:
        return next(k for k in BUDGET_KEYS if getattr(self, k) is not None)

    def scenario(self, target):
        """This entry as the assembly's `Scenario` on `target`."""
        from .generator import Scenario

        return Scenario(self.kind, getattr(self, self.kind), target, tuple(self.classes) if self.classes else None)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        unit = {"latency_ms": "ms", "macs": "", "size_kb": "kB"}[self.kind]
        where = f"-{self.target}" if self.target and self.kind != "macs" else ""
        classes = "-c" + "-".join(map(str, self.classes)) if self.classes else ""
        return f"{self.kind.split('_')[0]}{getattr(self, self.kind):g}{unit}{where}{classes}"[:64]


class GeneratorConfig(Strict):
    """The module assembler network and its training (the supernet stays frozen)."""

    hidden: int = Field(64, ge=4, le=4096, description="width of the generator's two hidden layers")
    epochs: float = Field(3.0, gt=0, le=10_000, description="passes over the training split, one sampled scenario per batch",
                          json_schema_extra={"smoke": 1})
    batch_size: int = Field(512, gt=0, le=1_000_000, description="training examples per step (one sampled scenario each); a "
                              "few hundred keep the masked supernet's loss from following one batch's noise",
                              json_schema_extra={"smoke": 32})
    lr: float = Field(3e-3, gt=0, le=10, description="Adam learning rate")
    budget_penalty: float = Field(0.0, ge=0, le=1e6, description="weight of the rounded model's relative cost above "
                                  "budget in the loss (0: none; the soft model meets the budget exactly, and the "
                                  "assembly fits the real cost)")
    temperature: float = Field(0.02, gt=0, le=100, description="temperature of the soft block gates, in units of the "
                               "path's scale (1 = every group at full width)")
    train_paths: bool = Field(False, description="train each order's path (width multipliers, block entry points) "
                              "besides the switch; on the factory benchmark's three supernets: the same mean accuracy, a "
                              "wider spread over seeds")


class SearchConfig(Strict):
    """The evolutionary-search baseline measured beside each assembled model."""

    population: int = Field(16, ge=2, le=10_000, description="candidates per generation", json_schema_extra={"smoke": 4})
    generations: int = Field(8, ge=1, le=10_000, description="generations after the random first one",
                             json_schema_extra={"smoke": 1})
    samples: int = Field(2000, ge=1, le=10_000_000, description="training examples each candidate is scored on (after its "
                         "BatchNorm recalibration)", json_schema_extra={"smoke": 128})
