"""The meal stage and the distillation methods: loss values, discriminator, target cache, end-to-end run, resume, bad input."""
import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from compress.cli import main
from compress.config import DataConfig
from compress.data import BatchLoader
from compress.methods.distill.adversary import Adversary, Discriminator
from compress.methods.distill.losses import TeacherTargets, ensemble_targets, kd_loss
from compress.models import build_model, make_spec
from compress.stages.meal import MealStage
from conftest import TINY_DATA, tiny_pipeline

STUDENT = {"arch": "cnn_s", "kwargs": {"channels": [8, 16]}}
TRAINED = {"train": {"count": 2, "arch": "cnn_s", "kwargs": {"channels": [8, 16]}, "epochs": 1}}


class Fixed(nn.Module):
    """A "teacher" that returns the same logits for every input."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def log(values):
    return [math.log(v) for v in values]


def test_ensemble_target_is_the_mean_of_teacher_softmaxes():
    teachers = [Fixed(log([1, 1, 2])), Fixed(log([2, 1, 1]))]  # softmax: [.25, .25, .5] and [.5, .25, .25]
    target = ensemble_targets(teachers, torch.zeros(1, 1))
    assert torch.allclose(target.probs, torch.tensor([[0.375, 0.25, 0.375]]))
    assert torch.allclose(target.logits, torch.tensor([[math.log(2) / 2, 0.0, math.log(2) / 2]]))


@pytest.mark.parametrize("temperature, hard_weight, smoothing", [(1.0, 0.0, 0.0), (1.0, 0.5, 0.0), (2.0, 0.0, 0.0),
                                                                   (2.0, 0.25, 0.0), (1.0, 0.5, 0.1)])
def test_kd_loss_equals_hand_computed_value(temperature, hard_weight, smoothing):
    student, target, label = log([1, 2, 1]), [0.5, 0.25, 0.25], 1
    scaled = [math.exp(s / temperature) for s in student]
    q = [v / sum(scaled) for v in scaled]
    kl = sum(p * math.log(p / qi) for p, qi in zip(target, q))
    nll = [math.log(4), math.log(2), math.log(4)]  # -log softmax(student) at T=1: [.25, .5, .25]
    cross_entropy = (1 - smoothing) * nll[label] + smoothing * sum(nll) / 3
    expected = (1 - hard_weight) * temperature**2 * kl + hard_weight * cross_entropy
    loss = kd_loss(torch.tensor([student]), torch.tensor([target]), torch.tensor([label]), temperature, hard_weight, smoothing)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    if temperature == 1.0 and hard_weight == 0.0:
        assert expected == pytest.approx(0.25 * math.log(2))


def test_discriminator_learns_separable_logits():
    torch.manual_seed(0)
    adversary = Adversary(Discriminator(10, [32]), lr=1e-2)
    teacher = torch.randn(64, 10) + 4 * nn.functional.one_hot(torch.randint(0, 10, (64,)), 10)  # confident
    student = 0.3 * torch.randn(64, 10)  # flat
    first_loss, _ = adversary.step(student, teacher)
    for _ in range(150):
        loss, accuracy = adversary.step(student, teacher)
    assert loss < first_loss / 3 and accuracy > 0.95
    # the student's adversarial term is now high for student-like logits and low for teacher-like ones
    assert adversary.student_loss(student, teacher) > 3 * adversary.student_loss(teacher, teacher)


def test_cached_and_uncached_teacher_targets_give_the_same_loss(tiny_data):
    torch.manual_seed(0)
    teachers = [build_model(make_spec("cnn_s", 1, 10, {"channels": [8, 16]})) for _ in range(2)]
    cached = TeacherTargets(teachers, tiny_data.train, 2.0, "cpu", cache=True, batch_size=100)
    live = TeacherTargets(teachers, tiny_data.train, 2.0, "cpu", cache=False)
    assert cached.table.probs.shape == (len(tiny_data.train), 10) and live.table is None
    for batch in BatchLoader(tiny_data.train, 32, shuffle=True, seed=1):
        student = torch.randn(len(batch.y), 10)
        a, b = cached(batch), live(batch)
        assert torch.allclose(a.logits, b.logits, atol=1e-5)
        expected = kd_loss(student, b.probs, batch.y, 2.0, 0.3).item()
        assert kd_loss(student, a.probs, batch.y, 2.0, 0.3).item() == pytest.approx(expected, rel=1e-5)
    assert all(not t.training and not any(p.requires_grad for p in t.parameters()) for t in teachers)


def test_augmented_data_computes_targets_per_batch_and_trains_the_discriminator(ctx):
    ctx = dataclasses.replace(ctx, data_config=DataConfig(**TINY_DATA, augment=True))
    spec = make_spec("cnn_s", 1, 10, STUDENT["kwargs"])
    cfg = MealStage.Config(type="meal", teachers=[TRAINED], temperature=2.0)
    metrics = MealStage(cfg).run(build_model(spec), spec, ctx).metrics
    assert metrics["teacher_targets_cached"] is False and metrics["teacher_seconds"] > 0
    assert 0 <= metrics["history"][0]["discriminator_accuracy"] <= 1


def weights_file(path, num_classes=10, channels=(8, 16)):
    save_file(build_model(make_spec("cnn_s", 1, num_classes, {"channels": list(channels)})).state_dict(), str(path))
    return path


def test_end_to_end_then_resume_reuses_cached_teachers(write_pipeline, tmp_path):
    teachers = [{"arch": "cnn_s", "kwargs": {"channels": [8, 16]}, "weights": str(weights_file(tmp_path / "t.safetensors"))}, TRAINED]
    path = write_pipeline(tiny_pipeline(model=STUDENT, stages=[{"type": "train", "epochs": 1},
                                                               {"type": "meal", "teachers": teachers, "epochs": 1}]))
    run_dir = tmp_path / "run"
    assert main([str(path), "--run-dir", str(run_dir), "--quiet"]) == 0
    meal = json.loads((run_dir / "report.json").read_text())["stages"][1]
    m = meal["metrics"]
    assert meal["type"] == "meal" and meal["status"] == "ran"
    assert [t["name"] for t in m["teachers"]] == ["teachers[0]", "teachers[1].train[0]", "teachers[1].train[1]"]
    assert all(0 <= t["val_accuracy"] <= 1 for t in m["teachers"]) and 0 <= m["ensemble_val_accuracy"] <= 1
    assert m["teacher_targets_cached"] is True and len(m["history"]) == 1 and "discriminator_loss" in m["history"][0]
    cache = sorted((run_dir / "work" / "02-meal" / "teachers").glob("*/weights.safetensors"))
    assert len(cache) == 2
    stamps = [f.stat().st_mtime_ns for f in cache]

    # as if interrupted while distilling: the teachers are cached but the stage did not finish
    for f in (run_dir / "stages" / "02-meal").iterdir():
        f.unlink()
    (run_dir / "stages" / "02-meal").rmdir()
    assert main([str(path), "--run-dir", str(run_dir), "--quiet"]) == 0
    stages = json.loads((run_dir / "report.json").read_text())["stages"]
    assert [s["status"] for s in stages] == ["resumed", "ran"]
    assert [t.get("reused") for t in stages[1]["metrics"]["teachers"]] == [None, True, True]
    assert [f.stat().st_mtime_ns for f in cache] == stamps
    assert stages[1]["metrics"]["history"] == m["history"]  # the same student training, teachers reused or not


def test_an_earlier_stage_teaches_the_pruned_model(write_pipeline, tmp_path):
    stages = [{"type": "train", "epochs": 1},
              {"type": "prune", "name": "shrink", "method": "channel", "final_sparsity": 0.5, "round_to": 4, "epochs": 1},
              {"type": "meal", "teachers": [{"stage": "train"}, {"stage": "shrink"}], "discriminator": {"enabled": False}, "epochs": 1}]
    path = write_pipeline(tiny_pipeline(model=STUDENT, stages=stages))
    assert main([str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 0
    train, shrink, meal = json.loads((tmp_path / "run" / "report.json").read_text())["stages"]
    teachers = meal["metrics"]["teachers"]
    assert [t["stage"] for t in teachers] == ["train", "shrink"]
    assert [t["params"] for t in teachers] == [train["metrics"]["params"], shrink["metrics"]["params"]]
    assert meal["metrics"]["params"] == shrink["metrics"]["params"] < train["metrics"]["params"]
    assert teachers[0]["val_accuracy"] == pytest.approx(train["metrics"]["val_accuracy"])


def test_a_teacher_stage_must_come_earlier(write_pipeline, tmp_path, capsys):
    stages = [{"type": "train", "name": "warmup", "epochs": 1}, {"type": "meal", "teachers": [{"stage": "train"}]},
              {"type": "train", "epochs": 1}]
    path = write_pipeline(tiny_pipeline(model=STUDENT, stages=stages))
    assert main([str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    assert "stages[1].teachers[0].stage: 'train' is not an earlier stage; expected one of: warmup" in capsys.readouterr().err
    assert not (tmp_path / "run" / "stages").exists()


BAD = [
    # (meal entry, words the error must contain); runtime checks follow a `train` teacher to show nothing was trained
    ({"teachers": []}, ["stages[0].teachers", "at least 1 item"]),
    ({"teachers": [TRAINED], "temperature": 0}, ["stages[0].temperature", "greater than 0", "(got 0)"]),
    ({"teachers": [TRAINED], "temperature": -1.5}, ["stages[0].temperature", "greater than 0"]),
    ({"teachers": [TRAINED], "hard_label_weight": 1.5}, ["stages[0].hard_label_weight", "less than or equal to 1"]),
    ({"teachers": [{"arch": "cnn_s"}]}, ["stages[0].teachers[0]", "one of {stage: NAME}, {arch, weights[, kwargs]} or {train:"]),
    ({"teachers": [{**TRAINED, "arch": "cnn_s"}]}, ["stages[0].teachers[0]", "one of {stage: NAME}"]),
    ({"teachers": [{"stage": "train", "arch": "cnn_s", "weights": "ten.safetensors"}]}, ["stages[0].teachers[0]", "one of {stage: NAME}"]),
    ({"teachers": [TRAINED, {"stage": "train"}]}, ["stages[0].teachers[1].stage: 'train' is not an earlier stage; expected one of: (none)"]),
    ({"teachers": [{"train": {"count": 1}}]}, ["stages[0].teachers[0].train.arch", "Field required"]),
    ({"teachers": [TRAINED], "discriminator": {"enabeld": False}}, ["stages[0].discriminator.enabeld: unknown key"]),
    ({"teachers": [TRAINED, {"arch": "cnn_s", "kwargs": {"channels": [8, 16]}, "num_classes": 5, "weights": "five.safetensors"}]},
     ["teachers[1] (cnn_s): outputs 5 classes but the student has 10"]),
    ({"teachers": [TRAINED, {"arch": "cnn_s", "kwargs": {"channels": [8, 32]}, "weights": "ten.safetensors"}]},
     ["teachers[1]", "ten.safetensors", "weights do not match", "shape mismatch"]),
    ({"teachers": [TRAINED, {"arch": "cnn_s", "weights": "missing.safetensors"}]}, ["teachers[1]", "weights file not found"]),
    ({"teachers": [TRAINED, {"train": {"arch": "cnn_z"}}]}, ["teachers[1].train[0]", "unknown architecture 'cnn_z'"]),
]


@pytest.mark.parametrize("entry, words", BAD)
def test_bad_input_is_a_clear_error_before_training(entry, words, write_pipeline, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    weights_file(tmp_path / "ten.safetensors")
    weights_file(tmp_path / "five.safetensors", num_classes=5)
    path = write_pipeline(tiny_pipeline(model=STUDENT, stages=[{"type": "meal", **entry}]))
    assert main([str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    message = capsys.readouterr().err
    assert all(word in message for word in words), message
    assert not list((tmp_path / "run").glob("work/**/*.safetensors"))
