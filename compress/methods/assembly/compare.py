"""One scenario measured three ways on the same data: the generator's assembly, the SortedNet prefix rule and the
evolutionary search, each with its cost against the budget, validation accuracy on the scenario's classes and wall
time."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...data import Split
from .assemble import Assembly, Factory, accuracy_of, assemble, calibrate, evolutionary_search, prefix_choice
from .generator import Scenario
from .modules import Choice

if TYPE_CHECKING:
    from ...context import RunContext


@dataclass
class ScenarioResult:
    scenario: Scenario
    assembly: Assembly
    metrics: dict


def choice_json(choice: Choice) -> dict:
    return {"modules": list(choice.modules), "blocks": list(choice.blocks)}


def measure_scenario(factory: Factory, scenario: Scenario, cfg, ctx: "RunContext") -> ScenarioResult:
    """Assemble `scenario` and measure it beside the prefix rule and (when `cfg.search` is set) the search."""
    batch, bn, device = ctx.data_config.batch_size, cfg.bn_recalibration_batches, ctx.device
    val, classes = ctx.data.val, scenario.classes

    def evaluated(choice: Choice, split: Split) -> tuple[float, float]:
        model, _ = factory.build(choice, classes)
        calibrate(model, ctx.data.train, classes, bn, batch, device, ctx.seed)
        return accuracy_of(model, split, classes, ctx.data_config.eval_batch_size, device), factory.cost(model, scenario)

    assembly = assemble(factory, scenario, ctx.data.train, bn, batch, device, ctx.seed)
    accuracy = accuracy_of(assembly.model, val, classes, ctx.data_config.eval_batch_size, device)
    prefix = prefix_choice(factory, scenario)
    prefix_accuracy, prefix_cost = evaluated(prefix, val)
    metrics = {"budget": {"kind": scenario.kind, "value": scenario.value, "target": scenario.target.name},
               "classes": list(classes) if classes else None, "choice": choice_json(assembly.choice),
               "order": assembly.order, "cost": assembly.cost, "repaired": assembly.repaired, "seconds": assembly.seconds,
               "assembly_seconds": sum(assembly.seconds.values()), "accuracy": accuracy,
               "prefix": {"choice": choice_json(prefix), "cost": prefix_cost, "accuracy": prefix_accuracy}}
    if cfg.search is not None:
        started = time.perf_counter()
        fitness_split = ctx.data.train.head(cfg.search.samples)
        best, evaluated_count = evolutionary_search(factory, scenario, lambda c: evaluated(c, fitness_split)[0],
                                                    cfg.search.population, cfg.search.generations, ctx.seed)
        seconds = time.perf_counter() - started
        search_accuracy, search_cost = evaluated(best, val)
        metrics["search"] = {"choice": choice_json(best), "cost": search_cost, "accuracy": search_accuracy,
                             "seconds": seconds, "evaluated": evaluated_count}
    ctx.log(f"[{ctx.stage_name}] {scenario.kind} {scenario.value:g}: assembled in {metrics['assembly_seconds']:.2f} s, "
            f"cost {assembly.cost:.4g}, val accuracy {accuracy:.2%} (prefix rule {prefix_accuracy:.2%}" +
            (f", search {metrics['search']['accuracy']:.2%} in {metrics['search']['seconds']:.1f} s)" if cfg.search else ")"))
    return ScenarioResult(scenario, assembly, metrics)
