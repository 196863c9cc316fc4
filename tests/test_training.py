import math

import pytest
import torch

from compress.errors import TrainingError
from compress.models import build_model, make_spec
from compress.training import Callback, Trainer, TrainConfig, evaluate, lr_factor


def small_model():
    torch.manual_seed(0)
    return build_model(make_spec("cnn_s", 1, 10, {"channels": [8, 16]}))


def test_training_learns(ctx):
    model = small_model()
    before = evaluate(model, ctx.data.val)["accuracy"]
    history = Trainer(model, TrainConfig(epochs=5, optimizer="adam", lr=0.01), ctx).fit()
    assert len(history) == 5 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_accuracy"] > max(0.3, before + 0.2)


def test_training_is_reproducible(ctx):
    weights = []
    for _ in range(2):
        model = small_model()
        Trainer(model, TrainConfig(epochs=1), ctx).fit()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


class Recorder(Callback):
    def __init__(self):
        self.events = []

    def on_fit_start(self, trainer): self.events.append("fit_start")
    def on_epoch_start(self, trainer, epoch): self.events.append(f"epoch_start{epoch}")
    def on_before_optimizer_step(self, trainer): self.events.append("before_step")
    def on_step_end(self, trainer): self.events.append(f"step_end{trainer.global_step}")
    def on_epoch_end(self, trainer, epoch, metrics): self.events.append(f"epoch_end{epoch}")
    def on_fit_end(self, trainer): self.events.append("fit_end")


def test_callbacks_and_custom_loss(ctx):
    recorder, seen = Recorder(), []

    def loss_fn(logits, batch):
        seen.append(batch.index)
        return torch.nn.functional.cross_entropy(logits, batch.y)

    trainer = Trainer(small_model(), TrainConfig(epochs=1), ctx, loss_fn=loss_fn, callbacks=[recorder])
    trainer.fit()
    steps = trainer.steps_per_epoch
    assert steps == 8
    assert recorder.events == ["fit_start", "epoch_start0", *[e for s in range(1, steps + 1) for e in ("before_step", f"step_end{s}")],
                               "epoch_end0", "fit_end"]
    assert sorted(torch.cat(seen).tolist()) == list(range(256))


def test_nan_loss_stops_with_clear_error(ctx):
    with pytest.raises(TrainingError, match=r"loss became (nan|inf).*lower the learning rate"):
        Trainer(small_model(), TrainConfig(epochs=1, lr=1e12, momentum=0.0), ctx).fit()


@pytest.mark.parametrize("schedule, step, expected", [
    ("cosine", 0, 1.0), ("cosine", 50, 0.5), ("cosine", 100, 0.0),
    ("step", 49, 1.0), ("step", 50, 0.1), ("step", 80, 0.01), ("constant", 99, 1.0),
])
def test_lr_schedules(schedule, step, expected):
    factor = lr_factor(TrainConfig(epochs=10, schedule=schedule), steps_per_epoch=10)
    assert math.isclose(factor(step), expected, abs_tol=1e-9)


def test_warmup_ramps_linearly():
    factor = lr_factor(TrainConfig(epochs=10, warmup_epochs=1, schedule="constant"), steps_per_epoch=10)
    assert [factor(s) for s in (0, 4, 9, 10)] == [0.1, 0.5, 1.0, 1.0]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_weight_decay_skips_biases_and_norms(ctx, optimizer):
    trainer = Trainer(small_model(), TrainConfig(optimizer=optimizer, weight_decay=0.1), ctx)
    decay, other = trainer.optimizer.param_groups
    assert decay["weight_decay"] == 0.1 and all(p.dim() > 1 for p in decay["params"])
    assert other["weight_decay"] == 0.0 and all(p.dim() == 1 for p in other["params"])


def test_a_step_function_runs_several_forward_passes_per_batch(ctx):
    """A stage that trains several sub-networks per batch plugs a whole step into the one loop: here the model on the
    batch and on a noisy copy, the loss their mean; the logits it returns give the reported train accuracy."""
    model, calls, batches = small_model(), [], []
    model.register_forward_hook(lambda *_: calls.append(1))

    class Seen(Callback):
        def on_batch_start(self, trainer, batch):
            batches.append(len(batch.y))

    def two_views(forward, batch):
        logits = forward(batch.x)
        noisy = forward(batch.x + 0.1 * torch.randn_like(batch.x))
        loss = (torch.nn.functional.cross_entropy(logits, batch.y) + torch.nn.functional.cross_entropy(noisy, batch.y)) / 2
        return loss, logits

    trainer = Trainer(model, TrainConfig(epochs=3, optimizer="adam", lr=0.01), ctx, step_fn=two_views, callbacks=[Seen()])
    history = trainer.fit()
    steps = trainer.steps_per_epoch * 3
    assert len(batches) == steps and sum(batches) == 3 * 256
    assert len(calls) == 2 * steps + 3  # two per step, one per epoch's validation pass (one batch of 256)
    assert history[-1]["train_loss"] < history[0]["train_loss"] and 0 < history[-1]["train_accuracy"] <= 1


def test_channels_last_trains_in_nhwc_and_returns_the_default_layout(ctx):
    runs = []
    for channels_last in (False, True):
        model = small_model()
        seen = []

        class Layout(Callback):
            def on_batch_start(self, trainer, batch):
                wide = [m.weight for m in trainer.model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1][0]
                seen.append(batch.x.is_contiguous(memory_format=torch.channels_last)
                            and wide.is_contiguous(memory_format=torch.channels_last) and not wide.is_contiguous())

        history = Trainer(model, TrainConfig(epochs=1, channels_last=channels_last), ctx, callbacks=[Layout()]).fit()
        assert set(seen) == {channels_last}  # weights (and batches) were NHWC exactly when asked
        assert all(p.is_contiguous() for p in model.parameters())  # what checkpoints and export expect
        runs.append((history[-1]["train_loss"], torch.cat([p.detach().flatten() for p in model.parameters()])))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-3)  # the same training, up to the kernels' rounding
    assert torch.allclose(runs[0][1], runs[1][1], atol=1e-3)
