"""The bad-input catalogue: every way a user's input can be wrong that we know of, each with its exit code and the key
words of its one-paragraph message. docs/errors.md lists the same rows with the fix for each."""
import io
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save

from compress.cli import main
from compress.models import build_model, make_spec
from compress.targets import resolve
from conftest import tiny_pipeline

MODEL = tiny_pipeline()["model"]


class Payload:
    """Unpickling it creates `marker`: the proof that a pickle ran code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def weights_of(channels) -> dict:
    return build_model(make_spec("cnn_s", 1, 10, {"channels": channels})).state_dict()


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def npz_bytes(**arrays) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def images(n: int) -> np.ndarray:
    return np.zeros((n, 28, 28), np.uint8)


def labels(n: int) -> np.ndarray:
    return np.arange(n) % 10


def profile_yaml(**change) -> str:
    fields = {**resolve("x86-avx2").model_dump(mode="json"), "name": "my-box", "aliases": [], **change}
    return yaml.safe_dump(fields, sort_keys=False)


class Inputs:
    """Writes the files one row needs into its own folder and returns the command line that uses them."""

    def __init__(self, folder: Path, finished: Path):
        self.folder, self.finished, self.run_dir = folder, finished, folder / "run"

    def path(self, name: str, content: bytes | str | None = None) -> str:
        """A path in the row's folder (parents created), holding `content` when given."""
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is not None:
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        return str(path)

    def run(self, *args: str, text: str | None = None, **change) -> list[str]:
        """`compress PIPELINE --run-dir RUN --quiet ARGS` for the tiny pipeline with `change` (or the raw `text`)."""
        content = text if text is not None else yaml.safe_dump(tiny_pipeline(**change), sort_keys=False)
        return [self.path("pipeline.yaml", content), "--run-dir", str(self.run_dir), "--quiet", *args]

    def weights(self, name: str, content: bytes) -> list[str]:
        """The tiny pipeline starting from the weights file `name`."""
        return self.run(model={**MODEL, "weights": self.path(name, content)})

    def npz(self, content: bytes | None, **data) -> list[str]:
        """The tiny pipeline on an npz file (None: no file)."""
        return self.run(data={"dataset": "npz", "path": self.path("data.npz", content), **data})

    def idx(self, **files: bytes) -> list[str]:
        """The tiny pipeline on IDX files of MNIST (keyword: file name with '-' as '_')."""
        for name, content in files.items():
            self.path(f"mnist/{name.replace('_', '-')}", content)
        return self.run(data={"dataset": "mnist", "root": str(self.folder / "mnist")})

    def resume(self, *args: str, damage=lambda stage_folder: None) -> list[str]:
        """A finished run of the tiny pipeline copied here, its stage folder damaged, run again."""
        shutil.copytree(self.finished, self.run_dir)
        damage(self.run_dir / "stages" / "01-train")
        return self.run(*args)

    def profile(self, *args: str, folder: str | None = None, report: str | None = None) -> list[str]:
        """`compress profile` of a copy of the finished run's artifacts (its report.json replaced by `report` when
        given), or of `folder`, on this machine."""
        if folder is None:
            shutil.copytree(self.finished, self.run_dir)
            folder = str(self.run_dir / "artifacts")
            if report is not None:
                (self.run_dir / "report.json").write_text(report)
        return ["profile", folder, "--target", "host", "--runs", "2", "--batch", "1", *args]


def corrupt(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")


CATALOGUE = [
    # (id, setup: Inputs -> argv, exit code, key words of the message)
    ("config/file-missing", lambda s: [s.path("nope.yaml")], 2, ["nope.yaml: file not found"]),
    ("config/malformed-yaml", lambda s: s.run(text="name: x\nstages:\n  - {type: train\nmodel: {arch: cnn_s}\n"), 2,
     ["pipeline.yaml:4:", "malformed YAML", "model: {arch: cnn_s}"]),
    ("config/not-a-mapping", lambda s: s.run(text="- train\n- export\n"), 2, ["expected a mapping", "got list"]),
    ("config/unknown-key", lambda s: s.run(modle={"arch": "cnn_s"}), 2, ["modle: unknown key"]),
    ("config/no-stages", lambda s: s.run(stages=[]), 2, ["stages:", "at least 1 item"]),
    ("config/unknown-stage", lambda s: s.run(stages=[{"type": "trian"}]), 2,
     ["stages[0].type", "unknown stage 'trian'", "did you mean 'train'"]),
    ("config/bad-stage-value", lambda s: s.run(stages=[{"type": "train", "lr": -1}]), 2,
     ["stages[0].lr", "greater than 0", "(got -1)"]),
    ("config/teacher-stage-not-earlier", lambda s: s.run(stages=[{"type": "meal", "teachers": [{"stage": "train"}]},
                                                                 {"type": "train"}]), 2,
     ["stages[0].teachers[0].stage: 'train' is not an earlier stage"]),
    ("config/no-target", lambda s: s.run(target=None), 2, ["no target", "--target NAME"]),
    ("config/unknown-export-format", lambda s: s.run(export={"formats": ["onnx-fp64"]}), 2,
     ["export.formats[0]", "unknown export format 'onnx-fp64'"]),
    ("config/opset-above-target", lambda s: s.run(export={"opset": 30}), 2,
     ["export.opset: 30", "maximum opset 21"]),
    ("cli/bad-option-value", lambda s: s.run("--device", "tpu"), 2, ["--device", "invalid choice: 'tpu'"]),
    ("cli/no-cuda", lambda s: s.run("--device", "cuda") if not torch.cuda.is_available() else pytest.skip("has CUDA"), 2,
     ["--device cuda", "no CUDA device", "--device cpu"]),
    ("model/unknown-arch", lambda s: s.run(model={"arch": "cnn-s"}), 2,
     ["unknown architecture 'cnn-s'", "did you mean 'cnn_s'"]),
    ("model/bad-kwargs", lambda s: s.run(model={"arch": "cnn_s", "kwargs": {"chanels": [8]}}), 2,
     ["model 'cnn_s': bad arguments", "chanels"]),
    ("model/python-ref-not-importable", lambda s: s.run(model={"arch": "python:no_such_module:net"}), 2,
     ["python:no_such_module:net", "cannot import net"]),
    ("model/too-few-classes", lambda s: s.run(model={**MODEL, "num_classes": 5}), 2,
     ["model.num_classes: 5", "10 classes", "remove it"]),
    ("model/wrong-input-channels", lambda s: s.run(model={**MODEL, "in_channels": 3}), 2,
     ["model.in_channels: 3", "have 1 channel"]),
    ("weights/missing", lambda s: s.run(model={**MODEL, "weights": s.path("none.safetensors")}), 2,
     ["none.safetensors: weights file not found"]),
    ("weights/pickle", lambda s: s.weights("w.pt", pickle.dumps({"w": Payload(s.path("payload-ran"))})), 2,
     ["w.pt: refused", "pickled Python objects", "could run code", "safetensors"]),
    ("weights/pickled-module", lambda s: s.weights("w.pt", torch_bytes(build_model(make_spec("cnn_s", 1, 10)))), 2,
     ["w.pt: refused", "pickled Python objects", "Unsupported global"]),
    ("weights/unrecognised-file", lambda s: s.weights("w.pt", b"these are not weights"), 2,
     ["w.pt: not a safetensors or torch file"]),
    ("weights/truncated-torch-file", lambda s: s.weights("w.pt", torch_bytes(weights_of([8, 16]))[:300]), 2,
     ["w.pt: corrupt or unreadable torch file", "failed finding central directory.)"]),
    ("weights/corrupt-safetensors", lambda s: s.weights("w.safetensors", b"\x00" * 64), 2,
     ["w.safetensors: corrupt or unreadable safetensors file"]),
    ("weights/not-a-state-dict", lambda s: s.weights("w.pt", torch_bytes(torch.zeros(3))), 2,
     ["expected a mapping of parameter names to tensors"]),
    ("weights/shape-mismatch", lambda s: s.weights("w.safetensors", save(weights_of([8, 32]))), 2,
     ["weights do not match the model", "shape mismatch", "2.0.weight: file (32, 8, 3, 3) vs model (16, 8, 3, 3)"]),
    ("data/unknown-dataset", lambda s: s.run(data={"dataset": "fashion_mnist"}), 2,
     ["data.dataset", "unknown dataset 'fashion_mnist'", "did you mean 'fashion-mnist'"]),
    ("data/idx-not-found", lambda s: s.idx(), 2, ["dataset 'mnist' not found", "mnist", "$COMPRESS_DATA"]),
    ("data/idx-bad-magic", lambda s: s.idx(train_images_idx3_ubyte=b"\x00\x00\x09\x03junk",
                                            train_labels_idx1_ubyte=idx_bytes(labels(10))), 2,
     ["train-images-idx3-ubyte: not an IDX file", "bad magic number"]),
    ("data/idx-truncated", lambda s: s.idx(train_images_idx3_ubyte=idx_bytes(images(10))[:-5],
                                           train_labels_idx1_ubyte=idx_bytes(labels(10))), 2,
     ["truncated IDX file", "header says (10, 28, 28)"]),
    ("data/idx-labels-missing", lambda s: s.idx(train_images_idx3_ubyte=idx_bytes(images(10))), 2,
     ["has train-images-idx3-ubyte but not train-labels-idx1-ubyte"]),
    ("data/idx-count-mismatch", lambda s: s.idx(train_images_idx3_ubyte=idx_bytes(images(10)),
                                                train_labels_idx1_ubyte=idx_bytes(labels(9))), 2,
     ["dataset 'mnist': x_train has 10 examples but y_train has 9"]),
    ("data/npz-no-path", lambda s: s.run(data={"dataset": "npz"}), 2, ["data.path: required for dataset 'npz'"]),
    ("data/npz-missing-file", lambda s: s.npz(None), 2, ["data.npz: npz file not found"]),
    ("data/npz-corrupt", lambda s: s.npz(b"PK\x03\x04 not really a zip"), 2, ["not a readable npz file"]),
    ("data/npz-pickled-objects", lambda s: s.npz(npz_bytes(x_train=np.array([{}] * 4, dtype=object), y_train=labels(4))),
     2, ["not a readable npz file", "Object arrays cannot be loaded when allow_pickle=False"]),
    ("data/npz-missing-arrays", lambda s: s.npz(npz_bytes(x_train=images(10))), 2, ["missing arrays ['y_train']"]),
    ("data/npz-half-test-split", lambda s: s.npz(npz_bytes(x_train=images(10), y_train=labels(10), x_test=images(2))), 2,
     ["has x_test but not the other test array"]),
    ("data/npz-test-count-mismatch", lambda s: s.npz(npz_bytes(x_train=images(10), y_train=labels(10), x_test=images(3),
                                                                y_test=labels(2))), 2,
     ["data.npz: x_test has 3 examples but y_test has 2"]),
    ("data/npz-unknown-test-label", lambda s: s.npz(npz_bytes(x_train=images(10), y_train=labels(10) % 5, x_test=images(2),
                                                               y_test=np.array([0, 7]))), 2,
     ["data.npz: y_test has label 7, but the training labels stop at 4"]),
    ("data/npz-float-labels", lambda s: s.npz(npz_bytes(x_train=images(10), y_train=np.zeros(10))), 2,
     ["data.npz: y_train: expected a 1-D array of non-negative integer class labels", "float64"]),
    ("data/npz-bad-image-shape", lambda s: s.npz(npz_bytes(x_train=np.zeros((10, 784), np.uint8), y_train=labels(10))), 2,
     ["data.npz: x_train: expected shape (N, H, W) or (N, C, H, W)", "(10, 784)"]),
    ("data/nan-inputs", lambda s: s.npz(npz_bytes(x_train=np.full((64, 28, 28), np.nan, np.float32), y_train=labels(64))), 2,
     ["the loss became nan", "epoch 1, step 1", "check the input data"]),
    ("train/nan-loss", lambda s: s.run(stages=[{"type": "train", "lr": 1e12, "momentum": 0.0}]), 2,
     ["stage 'train': the loss became", "lower the learning rate", "finished stages are kept"]),
    ("target/unknown-name", lambda s: s.run("--target", "jetsn"), 2,
     ["unknown target 'jetsn'", "did you mean 'jetson'", "compress targets"]),
    ("target/file-missing", lambda s: s.run("--target", s.path("mine.yaml")), 2, ["mine.yaml: target profile file not found"]),
    ("target/malformed-yaml", lambda s: s.run("--target", s.path("mine.yaml", "name: [x\n")), 2,
     ["mine.yaml:", "malformed YAML"]),
    ("target/missing-fields", lambda s: s.run("--target", s.path("mine.yaml", "name: x\n")), 2,
     ["mine.yaml: invalid target profile", "runtime: Field required"]),
    ("target/unknown-key", lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(turbo=True))), 2,
     ["invalid target profile", "turbo: unknown key"]),
    ("target/unsupported-preferred-precision",
     lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(preferred_precisions=["fp16"]))), 2,
     ["preferred_precisions ['fp16'] are not in precisions"]),
    ("targets-show/unknown", lambda s: ["targets", "show", "jetsn"], 2, ["unknown target 'jetsn'", "did you mean 'jetson'"]),
    ("run/corrupt-checkpoint", lambda s: s.resume(damage=lambda stage: corrupt(stage / "weights.safetensors")), 2,
     ["weights.safetensors: missing or corrupt (checksum differs from spec.json)", "--no-resume"]),
    ("run/missing-checkpoint-file", lambda s: s.resume(damage=lambda stage: (stage / "metrics.json").unlink()), 2,
     ["metrics.json: missing or corrupt", "--no-resume"]),
    ("run/corrupt-spec-json", lambda s: s.resume(damage=lambda stage: (stage / "spec.json").write_text("{\"model\": ")), 2,
     ["spec.json: corrupt", "--no-resume"]),
    ("run/spec-json-without-checksums",
     lambda s: s.resume(damage=lambda stage: (stage / "spec.json").write_text(json.dumps({"model": {}}))), 2,
     ["spec.json: corrupt", "'files'", "--no-resume"]),
    ("run/unwritable-run-dir", lambda s: s.run("--run-dir", s.path("file", "x") + "/run"), 2,
     ["is not writable", "--run-dir"]),
    ("export/nothing-deployable",
     lambda s: s.resume("--target", s.path("mine.yaml", profile_yaml(budgets={"size_mb": 1e-6}))), 2,
     ["no deployable artifact for my-box", "exceeds the budget", "report.json"]),
    ("profile/not-a-folder", lambda s: s.profile(folder=s.path("model.onnx", "x")), 2, ["not a folder of artifacts"]),
    ("profile/empty-folder", lambda s: s.profile(folder=str(s.folder)), 2, ["no .onnx or .engine files to profile"]),
    ("profile/corrupt-onnx", lambda s: s.profile(folder=str(Path(s.path("art/model.fp32.onnx", b"junk")).parent)), 2,
     ["model.fp32.onnx: ONNX Runtime cannot load or run it", "export it again"]),
    ("profile/corrupt-report", lambda s: s.profile(report="{"), 2,
     ["report.json: corrupt", "profile.json"]),
    ("profile/bad-batch", lambda s: s.profile("--batch", "1,x"), 2, ["--batch: expected comma-separated positive integers"]),
    ("profile/bad-runs", lambda s: s.profile("--runs", "0"), 2, ["--runs: expected a positive number, got 0"]),
    ("profile/no-target", lambda s: ["profile", str(s.folder)], 2, ["the following arguments are required: --target"]),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run of the tiny pipeline (stage folder, artifacts, report) that rows copy and damage."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(tiny_pipeline(), sort_keys=False))
    assert main([str(folder / "pipeline.yaml"), "--run-dir", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


@pytest.mark.parametrize("setup, code, words", [pytest.param(*row[1:], id=row[0]) for row in CATALOGUE])
def test_bad_input(setup, code, words, finished, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))  # no dataset from this machine's caches is found instead
    monkeypatch.delenv("COMPRESS_DATA", raising=False)
    argv = setup(Inputs(tmp_path, finished))
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    err = capsys.readouterr().err
    assert status == code, err
    assert "error: " in err and "Traceback" not in err
    for word in words:
        assert word in err, f"{word!r} not in: {err}"
    assert not (tmp_path / "payload-ran").exists(), "a pickled payload was executed"


def test_catalogue_is_documented():
    """docs/errors.md has a row for every entry of the catalogue."""
    doc = (Path(__file__).parent.parent / "docs" / "errors.md").read_text()
    assert len(CATALOGUE) >= 25 and len({row[0] for row in CATALOGUE}) == len(CATALOGUE)
    missing = [row[0] for row in CATALOGUE if f"`{row[0]}`" not in doc]
    assert not missing, f"not in docs/errors.md: {missing}"
