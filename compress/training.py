"""The one training loop every stage uses: optimizer and schedule from config, callbacks, progress, NaN guard."""
from __future__ import annotations

import math
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from .config import TrainConfig
from .data import Batch, BatchLoader, Split
from .distributed import all_reduce
from .errors import TrainingError

if TYPE_CHECKING:
    from .context import RunContext

LossFn = Callable[[torch.Tensor, Batch], torch.Tensor]
StepFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, torch.Tensor]]  # (model, batch) -> (loss, logits)


class Callback:
    """Hooks into `Trainer.fit`; every hook is a no-op by default."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_start(self, trainer: "Trainer", epoch: int) -> None: ...
    def on_batch_start(self, trainer: "Trainer", batch: Batch) -> None: ...
    def on_before_optimizer_step(self, trainer: "Trainer") -> None: ...
    def on_step_end(self, trainer: "Trainer") -> None: ...
    def on_epoch_end(self, trainer: "Trainer", epoch: int, metrics: dict) -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...


def make_loader(ctx: "RunContext") -> BatchLoader:
    """The training batches of this process: data.batch_size is the global batch, each of the world_size ranks takes
    its share of it."""
    data_cfg, dist = ctx.data_config, ctx.dist
    return BatchLoader(ctx.data.train, max(1, data_cfg.batch_size // dist.world_size), shuffle=True, seed=ctx.seed,
                       augment=data_cfg.augment, rank=dist.rank, world_size=dist.world_size)


class Trainer:
    """Trains `model` on `ctx.data.train` with `cfg`. Stages plug in a loss function on the logits (`loss_fn`) or a
    whole step (`step_fn(model, batch) -> (loss, logits)`, e.g. several sub-networks per batch), and callbacks."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, ctx: "RunContext", *, loss_fn: Optional[LossFn] = None,
                 step_fn: Optional[StepFn] = None, callbacks: Sequence[Callback] = ()):
        self.layout = torch.channels_last if cfg.channels_last else torch.preserve_format
        self.model, self.cfg, self.ctx = model.to(ctx.device, memory_format=self.layout), cfg, ctx
        self.data, self.device, self.name = ctx.data, ctx.device, ctx.stage_name
        self.callbacks = list(callbacks)
        self.loss_fn = loss_fn or (lambda logits, batch: nn.functional.cross_entropy(logits, batch.y, label_smoothing=cfg.label_smoothing))
        self.step_fn = step_fn or self.logits_step
        self.dist = ctx.dist
        self.eval_batch_size = ctx.data_config.eval_batch_size
        self.loader = make_loader(ctx)
        self.steps_per_epoch = len(self.loader)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.optimizer = make_optimizer(model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(cfg, self.steps_per_epoch))
        self.global_step = 0
        self.history: list[dict] = []
        self.forward = self.wrap(model)

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop calls: DistributedDataParallel under torchrun, the model itself otherwise."""
        if not self.dist.enabled:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def structure_changed(self) -> None:
        """Call after a callback replaced parameters (e.g. removed channels): new optimizer groups, new DDP wrapper.

        The learning-rate schedule carries on; optimizer state (momentum) starts afresh for the new tensors. With
        `channels_last` the new tensors are put back in NHWC (torch-pruning's slices come out in the default layout).
        """
        self.model.to(memory_format=self.layout)
        fresh = make_optimizer(self.model, self.cfg)
        for group, new in zip(self.optimizer.param_groups, fresh.param_groups):
            group["params"] = new["params"]
        self.optimizer.state.clear()
        self.forward = self.wrap(self.model)

    def fit(self) -> list[dict]:
        """Run all epochs; returns one metrics dict per epoch (train loss/accuracy, val loss/accuracy, lr)."""
        self.call("on_fit_start")
        for epoch in range(self.cfg.epochs):
            self.loader.set_epoch(epoch)
            self.call("on_epoch_start", epoch)
            train = self.train_epoch(epoch)
            val = evaluate(self.model, self.data.val, self.eval_batch_size, self.device)
            metrics = {"epoch": epoch + 1, "train_loss": train["loss"], "train_accuracy": train["accuracy"],
                       "val_loss": val["loss"], "val_accuracy": val["accuracy"], "lr": self.optimizer.param_groups[0]["lr"]}
            self.history.append(metrics)
            self.call("on_epoch_end", epoch, metrics)
            self.ctx.log(f"[{self.name}] epoch {epoch + 1}/{self.cfg.epochs}  loss {train['loss']:.4f}  "
                     f"acc {train['accuracy']:.2%}  val_loss {val['loss']:.4f}  val_acc {val['accuracy']:.2%}")
        if self.cfg.channels_last:
            self.model.to(memory_format=torch.contiguous_format)  # what checkpoints, pruning and export expect
        self.call("on_fit_end")
        return self.history

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        bar = tqdm(self.loader, desc=f"{self.name} {epoch + 1}/{self.cfg.epochs}", leave=False,
                   disable=self.ctx.quiet or not sys.stderr.isatty(), dynamic_ncols=True)
        for batch in bar:
            batch = Batch(*(t.to(self.device) for t in batch))
            if self.cfg.channels_last and batch.x.dim() == 4:
                batch = batch._replace(x=batch.x.contiguous(memory_format=torch.channels_last))
            self.call("on_batch_start", batch)
            loss, logits = self.step_fn(self.forward, batch)
            if not all_reduce([float(torch.isfinite(loss))], self.dist, "min")[0]:  # every rank stops together
                raise TrainingError(
                    f"stage '{self.name}': the loss became {loss.item()} at epoch {epoch + 1}, step {self.global_step + 1} "
                    f"(learning rate {self.optimizer.param_groups[0]['lr']:.3g}). The stage stopped and finished stages are kept; "
                    f"lower the learning rate, set grad_clip, or check the input data."
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.call("on_before_optimizer_step")
            self.optimizer.step()
            self.scheduler.step()
            self.global_step += 1
            self.call("on_step_end")
            n = len(batch.y)
            loss_sum += loss.item() * n
            correct += int((logits.argmax(1) == batch.y).sum())
            seen += n
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.2%}")
        loss_sum, correct, seen = all_reduce([loss_sum, correct, seen], self.dist)
        return {"loss": loss_sum / max(seen, 1), "accuracy": correct / max(seen, 1)}

    def logits_step(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The default step: one forward pass, `loss_fn` on its logits."""
        logits = model(batch.x)
        return self.loss_fn(logits, batch), logits

    def call(self, hook: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum), Adam or AdamW; weight decay only on tensors of rank > 1."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() > 1]
    other = [p for p in model.parameters() if p.requires_grad and p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    optimizer = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
    return optimizer(groups, lr=cfg.lr)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Per-step multiplier of the peak learning rate: linear warm-up, then cosine, constant or step decay."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        if cfg.schedule == "step":
            return 0.1 ** sum(progress >= m for m in (0.5, 0.75))
        return 1.0

    return factor


@contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """`model` in eval mode without gradients inside the block; its training mode comes back after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def predict(model: nn.Module, split: Split, batch_size: int = 512, device: torch.device | str = "cpu") -> torch.Tensor:
    """Logits of `model` (in eval mode) for every example of `split`, on the CPU."""
    with evaluating(model):
        return torch.cat([model(x.to(device)).float().cpu() for x in split.x.split(batch_size)])


def evaluate(model: nn.Module, split: Split, batch_size: int = 512, device: torch.device | str = "cpu") -> dict[str, float]:
    """Cross-entropy loss and top-1 accuracy on `split`."""
    logits = predict(model, split, batch_size, device)
    return {"loss": float(nn.functional.cross_entropy(logits, split.y)), "accuracy": float((logits.argmax(1) == split.y).float().mean())}
