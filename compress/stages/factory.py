"""`type: factory` — NN-Factory assembly. The supernet an earlier `type: slice` stage trained is cut into modules
(`module_channels` channels of every channel group, and its residual blocks); a small generator learns, with the
supernet frozen, to map a scenario (a latency, MACs or size budget on a target, and a class subset) to a width-first
and a depth-first path through the modules and the budget that switches between them; along the path, the budget
decides how far to go. Each scenario listed is then assembled in seconds without search: generated, fitted until
the real cost is within budget, its head cut to the scenario's classes, BatchNorm recalibrated. The assembled models
are the stage's family; the SortedNet prefix rule and an evolutionary search are measured beside each one. The
generator is saved with the stage, so `compress assemble RUN_DIR` makes more models later. Mechanics:
`methods/assembly`."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, field_validator

from ..config import Count
from ..errors import ConfigError
from ..methods.assembly.config import GeneratorConfig, ScenarioConfig, SearchConfig
from .base import Stage, StageConfig, StageResult, Variant, register_stage
from .slice import StageTeacher

class FactoryConfig(StageConfig):
    type: Literal["factory"] = Field("factory", description="the stage's registered name")
    supernet: Optional[StageTeacher] = Field(None, description="the slice stage whose supernet is assembled from; default: "
                                             "the nearest earlier one")
    module_channels: Optional[Count] = Field(None, le=4096, description="channels per module; default: the largest "
                                             "channel_alignment of the run's targets")
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    scenarios: list[ScenarioConfig] = Field(min_length=1, max_length=256, description="the models to assemble; the first "
                                            "is the stage's primary output")
    bn_recalibration_batches: int = Field(10, ge=0, le=1_000_000, description="training batches (of the scenario's classes) "
                                              "that recompute an assembled model's BatchNorm statistics",
                                              json_schema_extra={"smoke": 2})
    search: Optional[SearchConfig] = Field(default_factory=SearchConfig, description="the evolutionary-search baseline "
                                           "(null: leave it out)")

    @field_validator("scenarios")
    @classmethod
    def _names(cls, v: list[ScenarioConfig]) -> list[ScenarioConfig]:
        labels = [s.label for s in v]
        twice = sorted({n for n in labels if labels.count(n) > 1})
        if twice:
            raise ValueError(f"two scenarios are named {twice[0]!r}; give them different budgets or a `name`")
        return v

    def earlier_stages(self) -> dict[str, str]:
        return {"supernet.stage": self.supernet.stage} if self.supernet else {}


@register_stage
class FactoryStage(Stage):
    type = "factory"
    Config = FactoryConfig
    needs = "slice"
    variant_per_target = True  # each scenario names its target; its model is exported for that target
    example = {"type": "factory", "module_channels": 8,
               "generator": {"hidden": 64, "epochs": 3, "budget_penalty": 0.0, "train_paths": False},
               "scenarios": [{"macs": 0.5}, {"macs": 0.3, "classes": [0, 2, 5]}]}

    def target_dependence(self) -> Optional[str]:
        return "latency and size budgets are measured on the run's targets"

    def scenarios(self, ctx, num_classes: int) -> list:
        """The configured scenarios as `Scenario`s on the run's targets; a ConfigError for an unknown target or class."""
        targets = {t.name: t for t in ctx.targets}
        out = []
        for i, entry in enumerate(self.config.scenarios):
            where = f"stage {ctx.stage_name!r}: scenarios[{i}]"
            if entry.target and entry.target not in targets:
                raise ConfigError(f"{where}.target: {entry.target!r} is not a target of this run ({', '.join(targets)})")
            bad = [c for c in entry.classes or [] if c >= num_classes]
            if bad:
                raise ConfigError(f"{where}.classes: class {bad[0]} is out of range: the data has {num_classes} classes (0-"
                                  f"{num_classes - 1})")
            out.append(entry.scenario(targets[entry.target] if entry.target else ctx.target))
        return out

    def modular(self, model, ctx, depth: bool = True):
        from ..methods.assembly.modules import ModularSupernet
        from ..methods.slicing.supernet import nested

        align = self.config.module_channels or max([t.channel_alignment for t in ctx.targets] or [1])
        return ModularSupernet(nested(model, ctx.data.input_shape, ctx.device, align, depth), align, ctx.data.input_shape)

    def check(self, model, spec, ctx) -> None:
        """Targets and classes exist and every budget is above the smallest possible sub-network (measured on the model
        the run starts from, whose shape the slice stage keeps; a profile always has the cost model's numbers)."""
        from ..methods.assembly.assemble import Factory, check_scenario
        from ..methods.assembly.generator import Generator

        if ctx.target is None:
            raise ConfigError(f"stage {ctx.stage_name!r}: needs a target profile (its budgets are measured on one)")
        scenarios = self.scenarios(ctx, ctx.data.num_classes)
        net = self.modular(model, ctx)
        factory = Factory(net, Generator(1, net.sizes, net.depths), ctx.data.num_classes)
        for i, scenario in enumerate(scenarios):
            try:
                check_scenario(factory, scenario)
            except ConfigError as e:
                raise ConfigError(f"stage {ctx.stage_name!r}: scenarios[{i}]: {e}") from None

    def run(self, model, spec, ctx) -> StageResult:
        import math
        import time

        from ..methods.assembly.assemble import Factory
        from ..methods.assembly.generator import Generator, GeneratorTraining, context_size, train_generator
        from ..methods.assembly.persist import factory_files, supernet_source
        from ..methods.assembly.compare import measure_scenario
        from ..data import BatchLoader

        cfg, num_classes = self.config, ctx.data.num_classes
        supernet_model, supernet_spec, source = supernet_source(cfg.supernet.stage if cfg.supernet else None, ctx)
        net = self.modular(supernet_model, ctx, depth=bool(source["residual_stages"]))
        generator = Generator(context_size(num_classes), net.sizes, net.depths, cfg.generator.hidden, source["narrowest"])
        steps = max(1, math.ceil(cfg.generator.epochs * len(BatchLoader(ctx.data.train, cfg.generator.batch_size))))
        plan = GeneratorTraining(steps, cfg.generator.lr, cfg.generator.budget_penalty, cfg.generator.temperature,
                                 cfg.generator.train_paths)
        started = time.perf_counter()
        training = train_generator(net, generator, ctx.data.train, cfg.generator.batch_size, ctx.targets, num_classes,
                                   plan, ctx.seed, ctx.device, ctx.log)
        train_seconds = time.perf_counter() - started
        factory = Factory(net, generator, num_classes)
        made = {entry.label: measure_scenario(factory, scenario, cfg, ctx)
                for entry, scenario in zip(cfg.scenarios, self.scenarios(ctx, num_classes))}
        for entry, result in zip(cfg.scenarios, made.values()):
            if entry.target:  # exported for its target whatever export.variants says
                result.metrics["chosen_for"] = [entry.target]

        def spec_of(result):
            built = supernet_spec.then(*result.assembly.transforms)
            return built.for_classes(list(result.scenario.classes)) if result.scenario.classes else built

        primary, *others = made
        metrics = {"generator": {"steps": steps, "train_seconds": train_seconds, **training, "modules": net.sizes,
                                 "blocks": net.depths, "module_channels": net.module_channels},
                   "supernet": source, "scenarios": {name: r.metrics for name, r in made.items()}, "primary": primary}
        variants = {name: Variant(made[name].assembly.model, spec_of(made[name]), made[name].metrics) for name in others}
        return StageResult(model=made[primary].assembly.model, spec=spec_of(made[primary]), metrics=metrics, variants=variants,
                           files=factory_files(factory, net.module_channels, cfg.bn_recalibration_batches, source))
