"""Where a factory's parts live in a run folder: the supernet is the full network an earlier slice stage saved (named
by its stage folder and variant), the generator is the factory stage's `aux-generator.safetensors`, and
`aux-factory.json` records how to rebuild both. Nothing is unpickled; every file is checked against its checksum."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes

from ...checkpoint import VARIANTS, load_model_dir, read_aux, read_metrics, read_spec
from ...config import safe_name
from ...errors import ConfigError, RunDirError
from ...run_folder import STAGE_FOLDER
from ..slicing.supernet import nested
from .assemble import Factory
from .generator import Generator, context_size
from .modules import ModularSupernet

if TYPE_CHECKING:
    from ...context import RunContext

GENERATOR, RECIPE = "aux-generator.safetensors", "aux-factory.json"


def slice_folder(label: Optional[str], ctx: "RunContext") -> tuple[str, Path]:
    """The earlier slice stage named `label`, or the nearest earlier one: (label, folder)."""
    if label is not None:
        return label, ctx.earlier[label]
    for name, folder in reversed(list(ctx.earlier.items())):
        meta = read_spec(folder)
        if meta and meta.stage and meta.stage.type == "slice":
            return name, folder
    raise ConfigError(f"stage {ctx.stage_name!r}: no earlier `type: slice` stage has finished; add one before it")


def supernet_source(label: Optional[str], ctx: "RunContext"):
    """The full network of an earlier slice stage (its largest sub-network), its spec, and where it came from."""
    label, folder = slice_folder(label, ctx)
    metrics = read_metrics(folder)
    subnets = metrics.get("subnets") or {}
    if not subnets:
        raise RunDirError(f"{folder}: the slice stage recorded no sub-networks; rerun it")
    full = max(subnets, key=lambda n: (subnets[n]["macs_share"], subnets[n].get("depth") or 0))
    variant = full if full in read_spec(folder).variants else None
    model, spec, _ = load_model_dir(folder / VARIANTS / variant if variant else folder, ctx.device)
    source = {"stage": label, "folder": folder.name, "variant": variant, "subnet": full,
              "residual_stages": metrics.get("residual_stages") or [],
              "narrowest": min(subnet["width"] for subnet in subnets.values())}
    return model, spec, source


def factory_files(factory: Factory, module_channels: int, bn_batches: int, source: dict) -> dict[str, bytes]:
    """The stage's own files: the generator's weights and the recipe that rebuilds the factory."""
    generator = factory.generator
    recipe = {"num_classes": factory.num_classes, "hidden": generator.hidden, "sizes": generator.sizes,
              "depths": generator.depths, "module_channels": module_channels, "bn_recalibration_batches": bn_batches,
              "supernet": source}
    state = {k: v.detach().cpu().contiguous() for k, v in generator.state_dict().items()}
    return {GENERATOR: safetensors_bytes(state), RECIPE: json.dumps(recipe, indent=1).encode()}


def factory_folder(run_dir: Path) -> Path:
    """The run's last finished factory stage folder; a RunDirError saying which stages to add when there is none."""
    stages = sorted(p for p in (run_dir / "stages").glob("*") if STAGE_FOLDER.match(p.name)) if (run_dir / "stages").is_dir() else []
    found = [p for p in stages if (meta := read_spec(p)) and meta.stage and meta.stage.type == "factory"]
    if not found:
        has_slice = any((meta := read_spec(p)) and meta.stage and meta.stage.type == "slice" for p in stages)
        add = "a `type: factory` stage after its slice stage" if has_slice else "a `type: slice` stage, then a `type: factory` stage"
        raise RunDirError(f"{run_dir}: no trained supernet and generator (no finished factory stage); add {add} to the "
                          f"pipeline and run it")
    return found[-1]


def load_factory(run_dir: Path, input_shape: tuple[int, ...], device) -> tuple[Factory, object, dict]:
    """The factory a run's factory stage saved: (factory, the supernet's spec, the recipe)."""
    folder = factory_folder(run_dir)
    try:
        recipe = json.loads(read_aux(folder, RECIPE))
        source = recipe["supernet"]
        if not STAGE_FOLDER.match(source["folder"]):
            raise ValueError(f"supernet folder {source['folder']!r}")
        model_dir = run_dir / "stages" / source["folder"]
        if source["variant"] is not None:
            model_dir = model_dir / VARIANTS / safe_name(source["variant"])
        sizes, depths = list(recipe["sizes"]), list(recipe["depths"])
        num_classes, hidden, channels = int(recipe["num_classes"]), int(recipe["hidden"]), int(recipe["module_channels"])
        narrowest = float(source["narrowest"])
    except (KeyError, TypeError, ValueError) as e:
        raise RunDirError(f"{folder / RECIPE}: corrupt ({type(e).__name__}: {e}); rerun the factory stage with --no-resume") from None
    model, spec, _ = load_model_dir(model_dir, device)
    net = ModularSupernet(nested(model, input_shape, device, channels, bool(source["residual_stages"])), channels, input_shape)
    if net.sizes != sizes or net.depths != depths:
        raise RunDirError(f"{model_dir}: its supernet has {net.sizes} modules and {net.depths} blocks, the generator in "
                          f"{folder} was trained for {sizes} and {depths}; rerun the factory stage")
    generator = Generator(context_size(num_classes), sizes, depths, hidden, narrowest)
    try:
        generator.load_state_dict(safetensors_load(read_aux(folder, GENERATOR)))
    except RuntimeError as e:  # another version's generator: other tensors or shapes
        raise RunDirError(f"{folder / GENERATOR}: not a generator this version can load ({str(e).splitlines()[0]}); rerun "
                          f"the factory stage with --no-resume") from None
    return Factory(net, generator.eval().to(torch.device("cpu")), num_classes), spec, recipe
