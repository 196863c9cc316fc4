"""`compress assemble RUN_DIR --target NAME --macs X [--classes 0,2,5]`: one more model from a finished run's factory
stage, in seconds and without search: load the supernet and generator, generate, repair to the budget, recalibrate
BatchNorm, export and validate for the target. Writes `RUN_DIR/assembled/<name>/` (the artifacts and a
report.json) and prints the wall time of each step."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from pydantic import ValidationError

from .atomic import atomic_write, to_json
from .config import error_lines
from .errors import ConfigError, RunDirError
from .run_folder import check_replaceable, is_run_folder, locked, remove_tree

STEPS = ("load", "generate", "repair", "bn", "export", "validate")


def scenario_entry(budget: dict[str, Optional[float]], classes: Optional[str]):
    """The command line's scenario, validated like a pipeline file's `scenarios` entry."""
    from .methods.assembly.config import ScenarioConfig

    given = {k: v for k, v in budget.items() if v is not None}
    try:
        parsed = [int(c) for c in classes.split(",")] if classes else None
    except ValueError:
        raise ConfigError(f"--classes: expected class indices separated by commas, e.g. 0,2,5; got {classes!r}") from None
    try:
        return ScenarioConfig(**given, classes=parsed)
    except ValidationError as e:
        problems = "; ".join(line.replace("size_kb", "--size-kb").replace("latency_ms", "--latency-ms")
                             .replace("macs", "--macs") for line in error_lines(e))
        raise ConfigError(f"compress assemble: {problems}") from None


def assemble_command(run_dir: Path, target_name: str, budget: dict[str, Optional[float]], classes: Optional[str],
                     quiet: bool = False) -> dict:
    """Assemble, export and validate one model from `run_dir`'s factory; returns the report it writes."""
    import torch

    from .data import load_data
    from .export.runner import export_and_validate
    from .methods.assembly.assemble import accuracy_of, assemble
    from .methods.assembly.compare import choice_json
    from .methods.assembly.persist import load_factory
    from .pipeline_file import load_pipeline
    from .targets import resolve

    entry = scenario_entry(budget, classes)
    if not is_run_folder(run_dir):
        raise RunDirError(f"{run_dir}: not a run folder of compress (run a pipeline with a factory stage first)")
    target = resolve(target_name)
    seconds = dict.fromkeys(STEPS, 0.0)
    with locked(run_dir):
        started = time.perf_counter()
        cfg = load_pipeline(run_dir / "pipeline.resolved.yaml").config
        data = load_data(cfg.data, cfg.seed)
        factory, spec, recipe = load_factory(run_dir, data.input_shape, torch.device("cpu"))
        bad = [c for c in entry.classes or [] if c >= factory.num_classes]
        if bad:
            raise ConfigError(f"--classes: class {bad[0]} is out of range: the model has {factory.num_classes} classes "
                              f"(0-{factory.num_classes - 1})")
        seconds["load"] = time.perf_counter() - started
        scenario = entry.scenario(target)
        assembly = assemble(factory, scenario, data.train, recipe.get("bn_recalibration_batches", 10),
                            cfg.data.batch_size, torch.device("cpu"), cfg.seed)
        seconds.update(assembly.seconds)
        model_spec = spec.then(*assembly.transforms)
        model_spec = model_spec.for_classes(list(scenario.classes)) if scenario.classes else model_spec
        out = run_dir / "assembled" / f"{entry.label}-{target.name}"[:100]
        if out.exists():
            check_replaceable(out, lambda name: name == "report.json" or name.startswith(("model.", "tensorrt-")))
            remove_tree(out, run_dir)
        artifacts, deploy = export_and_validate(assembly.model, model_spec, data, cfg.export, target, out,
                                                cfg.data.eval_batch_size, variant=entry.label, seconds=seconds)
        accuracy = accuracy_of(assembly.model, data.val, scenario.classes, cfg.data.eval_batch_size, "cpu")
        report = {"run_dir": str(run_dir), "target": target.name, "scenario": entry.model_dump(mode="json"),
                  "choice": choice_json(assembly.choice), "order": assembly.order, "cost": assembly.cost,
                  "repaired": assembly.repaired, "val_accuracy": accuracy, "seconds": seconds,
                  "model": model_spec.model_dump(mode="json"), "artifacts": [a.to_dict() for a in artifacts],
                  "deploy": deploy}
        atomic_write(out / "report.json", to_json(report))
    if not quiet:
        print_lines(report, out)
    if deploy is None:
        raise ConfigError(f"no artifact of the assembled model is deployable on {target.name}; see {out / 'report.json'}")
    return report


def print_lines(report: dict, out: Path) -> None:
    """Each step's wall time, then what was made."""
    for step in STEPS:
        print(f"{step:<9} {report['seconds'][step]:8.3f} s")
    kind = next(k for k in ("latency_ms", "macs", "size_kb") if report["scenario"][k] is not None)
    repaired = f" (repaired: {report['repaired']})" if report["repaired"] else ""
    print(f"assembled {report['scenario']['name'] or out.name} ({report['order']}): {kind} {report['cost']:.4g} <= "
          f"{report['scenario'][kind]:g}{repaired}, val accuracy {report['val_accuracy']:.2%}")
    print(f"wrote {out}/ (report.json; deploy: {report['deploy']['path'] if report['deploy'] else 'none'})")
