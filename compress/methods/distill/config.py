"""Settings of distillation: teachers (from an earlier stage, a weights file, or trained in the stage) and the output
discriminator. Plain pydantic, no torch, so a pipeline file is validated without it."""
from __future__ import annotations

from typing import Annotated, Optional

from pydantic import Field, model_validator

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
