"""Settings of distillation: teachers (from an earlier stage, a weights file, or trained in the stage), the output
discriminator, and the progressive chain's students, ensemble and selection. Plain pydantic, no torch, so a pipeline file is validated without it."""
from __future__ import annotations

from typing import Annotated, Literal, Optional, Union

from pydantic import Field, PositiveFloat, model_validator

from ...config import Count, FilePath, Kwargs, Strict, TrainConfig


class TeacherTraining(TrainConfig):
    """Teachers trained inside the stage with the shared loop (optimizer fields as in `type: train`)."""

    count: int = Field(1, ge=1, le=64, description="how many to train, each with its own seed")
    arch: str = Field(description="architecture of these teachers (as model.arch)")
    kwargs: Kwargs = Field(default_factory=dict, description="extra keyword arguments for the architecture")


class TeacherConfig(Strict):
    """One `teachers` entry: `{stage: NAME}`, `{arch, weights, kwargs?}` (weights optional for 'hf:FOLDER') or `{train: {count, arch, epochs, ...}}`."""

    stage: Optional[str] = Field(None, description="the model an earlier stage of this run produced (its name, or type when unnamed)")

    arch: Optional[str] = Field(None, description="architecture of a teacher loaded from `weights`")
    weights: Optional[FilePath] = Field(None, description="the teacher's .safetensors (or tensors-only .pt) file; "
                                                          "default for 'hf:FOLDER': the folder's weights")
    kwargs: Kwargs = Field(default_factory=dict, description="extra keyword arguments for `arch`")
    num_classes: Optional[Count] = Field(None, description="default: the student's")
    in_channels: Optional[Count] = Field(None, description="default: the student's")
    train: Optional[TeacherTraining] = Field(None, description="train teachers here instead of loading one")

    @model_validator(mode="after")
    def one_form(self) -> "TeacherConfig":
        weighted = self.weights is not None or (self.arch or "").startswith("hf:")  # a Hugging Face folder brings its own
        from_file = self.arch is not None and weighted and not {"stage", "train"} & self.model_fields_set
        forms = [from_file, self.model_fields_set == {"train"}, self.model_fields_set == {"stage"}]
        if sum(forms) != 1:
            raise ValueError("expected one of {stage: NAME}, {arch, weights[, kwargs]} or {train: {count, arch, epochs, ...}}")
        return self


class DiscriminatorConfig(Strict):
    """MEAL V2's output discriminator."""

    enabled: bool = Field(True, description="train an output discriminator and add its adversarial term")
    weight: float = Field(1.0, ge=0, description="weight of the adversarial term in the student's loss")
    lr: float = Field(1e-4, gt=0, le=10, description="Adam learning rate of the discriminator")
    hidden: list[Annotated[int, Field(ge=1, le=65536)]] = Field(default_factory=lambda: [64], description="hidden layer widths of the MLP")


class SelfDistillation(Strict):
    """Distillation from the model as a stage received it: the model being changed (pruned) learns the original's soft
    predictions, instead of the labels alone."""

    temperature: float = Field(1.0, gt=0, le=1000, description="softmax temperature of teacher and student")
    hard_label_weight: float = Field(0.5, ge=0, le=1, description="weight of cross-entropy to the labels (with "
                                     "label_smoothing); the soft term gets 1 - this")


class StudentSize(Strict):
    """One student: a `mamba_s` of these sizes."""

    d_model: int = Field(ge=4, le=4096, description="token width")
    n_layers: int = Field(ge=1, le=64, description="Mamba blocks")
    d_state: int = Field(ge=1, le=256, description="states per channel of the selective scan")
    expand: int = Field(2, ge=1, le=8, description="inner width = expand x d_model")
    patch: int = Field(4, ge=1, le=1024, description="square patch side; must divide the image (4 on 28x28: 49 tokens)")
    bidirectional: bool = Field(False, description="a second scan reads the tokens backwards (Vision Mamba)")


class StudentCount(Strict):
    """`count` students: the first of size `first`, each later one with d_model, n_layers and d_state times
    shrink^k (rounded; at least 1, d_model at least 4)."""

    count: int = Field(ge=1, le=8, description="how many students")
    shrink: float = Field(0.6, gt=0, lt=1, description="size factor from one student to the next")
    first: StudentSize = Field(default_factory=lambda: StudentSize(d_model=64, n_layers=4, d_state=16),
                               description="the largest student")

    def sizes(self) -> list[StudentSize]:
        f = self.first
        return [f.model_copy(update={"d_model": max(4, round(f.d_model * self.shrink**k)),
                                     "n_layers": max(1, round(f.n_layers * self.shrink**k)),
                                     "d_state": max(1, round(f.d_state * self.shrink**k))}) for k in range(self.count)]


class EnsembleConfig(Strict):
    """The students as an ensemble: the most accurate subset within a budget, exported as one graph."""

    enabled: bool = Field(True, description="add the chosen ensemble to the family (variant `ensemble`)")
    weights: Literal["uniform", "fitted"] = Field("uniform", description="uniform, or mixture weights fitted on the "
                                                  "validation split (maximum likelihood)")
    macs: Optional[PositiveFloat] = Field(None, description="budget: summed MACs of the members as a share of the teacher's")
    latency_ms: Optional[Union[PositiveFloat, Literal["budget"]]] = Field(
        None, description="budget: summed batch-1 latency of the members on the target (cost model); 'budget': the "
                          "target's latency budget")

    @model_validator(mode="after")
    def _one_budget(self) -> "EnsembleConfig":
        if self.macs is not None and self.latency_ms is not None:
            raise ValueError("give one of macs, latency_ms, not both")
        return self


class SelectConfig(Strict):
    """How the primary model is chosen from the family: `{smallest_within: POINTS}` or `{budget: target}`."""

    smallest_within: Optional[float] = Field(None, ge=0, le=100, description="the fewest MACs whose validation accuracy "
                                             "is within this many points of the teacher's (else the most accurate)")
    budget: Optional[Literal["target"]] = Field(None, description="the most accurate model within the target's latency "
                                                "budget, by the cost model (else the fastest)")

    @model_validator(mode="after")
    def _one_rule(self) -> "SelectConfig":
        if (self.smallest_within is None) == (self.budget is None):
            raise ValueError("expected one of {smallest_within: POINTS} or {budget: target}")
        return self
