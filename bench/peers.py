"""The peers of the headline benchmark, each as its library's user would run it on the converged reference: torch-pruning
one-shot (our prune stage with a one-shot schedule), torch-pruning's own iterative MagnitudePruner, NVIDIA Model
Optimizer's FastNAS, each followed by the same fine-tuning; and small dense models trained from scratch."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import torch
from torch import nn

from compress.config import DataConfig, TrainConfig
from compress.context import RunContext
from compress.data import DataBundle
from compress.metrics import count_macs
from compress.models import build_model
from compress.models.resize import resize_changes, shape_attrs
from compress.models.spec import ModelSpec, Resize
from compress.pipeline import seed_everything
from compress.stages.prune import PruneStage
from compress.training import Callback, Trainer

# every fine-tuning row (ours, sliced and every pruning peer): the prune stage's default learning rate, in the NHWC
# layout that trains these models 1.1-1.6x faster per step on this CPU (docs/benchmarks.md)
FINE_TUNING = {"lr": 0.05, "channels_last": True}
ROUND_TO = 8  # channel counts of every pruned peer: multiples of 8, as the target's INT8 kernels want
ITERATIVE_STEPS = 5  # torch-pruning's iterative pruner: pruning steps, spread over the first half of the fine-tuning
FASTNAS_SCORE_EXAMPLES = 2000  # validation examples FastNAS scores each candidate sub-network on
FASTNAS_CALIBRATION_BATCHES = 20  # training batches FastNAS recalibrates BatchNorm on per candidate


def classifier(model: nn.Module) -> nn.Module:
    """The model's last linear layer: no pruner may remove its outputs (the classes)."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


def resized(model: nn.Module, spec: ModelSpec, before: dict) -> ModelSpec:
    """`spec` with the channel counts `model` has now (its shapes were `before`), so that it rebuilds without pickle."""
    return spec.then(Resize(modules=resize_changes(before, shape_attrs(model))))


def fine_tune(model: nn.Module, data: DataBundle, data_cfg: DataConfig, epochs: int, seed: int, name: str, quiet: bool,
              callbacks=()) -> Trainer:
    ctx = RunContext(data=data, data_config=data_cfg, seed=seed, quiet=quiet, stage_name=name)
    trainer = Trainer(model, TrainConfig(epochs=epochs, **FINE_TUNING), ctx, callbacks=callbacks)
    trainer.fit()
    return trainer


def one_shot(reference: nn.Module, spec: ModelSpec, data: DataBundle, data_cfg: DataConfig, macs: float, epochs: int,
             seed: int, target, quiet: bool) -> tuple[nn.Module, ModelSpec]:
    """torch-pruning one-shot to `macs` of the MACs (our prune stage, schedule one_shot), then `epochs` of fine-tuning."""
    seed_everything(seed)
    config = PruneStage.Config.model_validate({"type": "prune", "method": "channel", "target_macs": macs, "round_to": ROUND_TO,
                                               "schedule": {"kind": "one_shot"}, "epochs": epochs, **FINE_TUNING})
    ctx = RunContext(data=data, data_config=data_cfg, target=target, seed=seed, quiet=quiet, stage_name="one-shot")
    result = PruneStage(config).run(copy.deepcopy(reference), spec, ctx)
    return result.model, result.spec


def magnitude_pruner(model: nn.Module, example: torch.Tensor, ratio: float, steps: int):
    import torch_pruning as tp

    return tp.pruner.MagnitudePruner(model, example, importance=tp.importance.MagnitudeImportance(p=2), pruning_ratio=ratio,
                                     iterative_steps=steps, ignored_layers=[classifier(model)], round_to=ROUND_TO)


def uniform_ratio(model: nn.Module, example: torch.Tensor, macs: float) -> float:
    """The smallest per-layer channel pruning ratio at which torch-pruning's MagnitudePruner leaves at most `macs` of
    the model's MACs (bisection over one-shot trials on copies)."""
    goal, low, high = macs * count_macs(model, tuple(example.shape[1:])), 0.0, 0.95
    for _ in range(12):
        trial = copy.deepcopy(model)
        ratio = (low + high) / 2
        magnitude_pruner(trial, example, ratio, 1).step()
        low, high = (ratio, high) if count_macs(trial, tuple(example.shape[1:])) > goal else (low, ratio)
    return high


class IterativeSteps(Callback):
    """torch-pruning's iterative recipe inside the fine-tuning: `pruner.step()` at evenly spaced steps of the first half."""

    def __init__(self, pruner, steps: int):
        self.pruner, self.steps, self.at = pruner, steps, set()

    def on_fit_start(self, trainer: Trainer) -> None:
        half = trainer.total_steps / 2
        self.at = {math.floor(i * half / self.steps) for i in range(self.steps)}

    def on_batch_start(self, trainer: Trainer, batch) -> None:
        if trainer.global_step in self.at:
            self.pruner.step()
            trainer.structure_changed()


def iterative(reference: nn.Module, spec: ModelSpec, data: DataBundle, data_cfg: DataConfig, macs: float, epochs: int,
              seed: int, quiet: bool) -> tuple[nn.Module, ModelSpec]:
    """torch-pruning's MagnitudePruner (L2, uniform ratio, `ITERATIVE_STEPS` steps) during `epochs` of fine-tuning."""
    seed_everything(seed)
    model, example = copy.deepcopy(reference), data.val.x[:1]
    before = shape_attrs(model)
    ratio = uniform_ratio(model, example, macs)
    steps = min(ITERATIVE_STEPS, max(1, len(data.train) // data_cfg.batch_size * epochs // 2))
    fine_tune(model, data, data_cfg, epochs, seed, "tp-iterative", quiet, [IterativeSteps(magnitude_pruner(model, example, ratio, steps), steps)])
    return model, resized(model, spec, before)


def fastnas_available() -> str:
    """'' when NVIDIA Model Optimizer's pruning imports, else why not."""
    try:
        import modelopt.torch.prune  # noqa: F401
    except Exception as e:  # noqa: BLE001 - any import failure is reported in the table, not raised
        return f"{type(e).__name__}: {e}".splitlines()[0]
    return ""


def fastnas_search(reference: nn.Module, spec: ModelSpec, data: DataBundle, data_cfg: DataConfig, macs: float,
                   folder: Path, quiet: bool) -> tuple[nn.Module, ModelSpec]:
    """Model Optimizer's FastNAS to `macs` of the FLOPs (channels in multiples of 8, candidates scored by validation
    accuracy after BatchNorm recalibration), rebuilt as a plain model from its spec. Seeded with 0: one search per
    level, which every budget and seed then fine-tunes."""
    import modelopt.torch.prune as mtp

    seed_everything(0)
    model, before = copy.deepcopy(reference).eval(), shape_attrs(reference)
    x, y = data.val.x[:FASTNAS_SCORE_EXAMPLES], data.val.y[:FASTNAS_SCORE_EXAMPLES]

    def score(candidate: nn.Module) -> float:
        candidate.eval()
        with torch.no_grad():
            return float((candidate(x).argmax(1) == y).float().mean())

    batch = data_cfg.batch_size
    loader = [(data.train.x[i:i + batch], data.train.y[i:i + batch]) for i in range(0, batch * FASTNAS_CALIBRATION_BATCHES, batch)]
    mode = [("fastnas", {"nn.Conv2d": {"*": {"channel_divisor": ROUND_TO}}, "nn.BatchNorm2d": {"*": {"feature_divisor": ROUND_TO}}})]
    folder.mkdir(parents=True, exist_ok=True)
    searched, _ = mtp.prune(model, mode=mode, constraints={"flops": f"{100 * macs:g}%"}, dummy_input=data.val.x[:1],
                            config={"data_loader": loader, "score_func": score, "checkpoint": str(folder / "fastnas-search.pth"),
                                    "verbose": not quiet})
    pruned_spec = resized(searched, spec, before)
    plain = build_model(pruned_spec)
    plain.load_state_dict(searched.state_dict())
    return plain, pruned_spec


def fine_tuned(model: nn.Module, spec: ModelSpec, data: DataBundle, data_cfg: DataConfig, epochs: int, seed: int, name: str,
               quiet: bool) -> tuple[nn.Module, ModelSpec]:
    """A copy of `model` after `epochs` of the peers' fine-tuning."""
    seed_everything(seed)
    model = copy.deepcopy(model)
    fine_tune(model, data, data_cfg, epochs, seed, name, quiet)
    return model, spec
