"""The bad-input catalogue: every way a user's input can be wrong that we know of, each with its exit code and the key
words of its one-paragraph message. docs/errors.md lists the same rows with the fix for each."""
import gzip
import io
import json
import os
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

    def run(self, *args: str, text: str | bytes | None = None, **change) -> list[str]:
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

    def assemble(self, *args: str) -> list[str]:
        """`compress assemble` on a copy of the finished run (which has no factory stage)."""
        shutil.copytree(self.finished, self.run_dir)
        return ["assemble", str(self.run_dir), "--target", "x86-avx2", *args]

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


def edit_spec(stage: Path, change) -> None:
    """Apply `change` to the model spec recorded in a stage folder's spec.json."""
    meta = json.loads((stage / "spec.json").read_text())
    change(meta["model"])
    (stage / "spec.json").write_text(json.dumps(meta))


def gzip_damaged_inside(data: bytes) -> bytes:
    """A gzip stream whose header is fine and whose compressed body is not."""
    packed = bytearray(gzip.compress(data))
    packed[20:40] = b"\xff" * 20
    return bytes(packed)


def alias_bomb(levels: int = 9) -> str:
    """A few hundred bytes of YAML whose aliases expand to 10**levels values ("billion laughs")."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def npz_train(**arrays) -> bytes:
    """An npz of the tiny pipeline's shape, with `arrays` replacing or adding some."""
    return npz_bytes(**{"x_train": images(40), "y_train": labels(40), **arrays})


def user_net_raising(in_channels: int, num_classes: int, **kwargs):
    """A `python:` model builder that rejects its arguments with a ValueError, as library builders do."""
    raise ValueError(f"depth must be one of 18, 34, 50 (got {kwargs.get('depth')})")


def user_net_groupnorm(in_channels: int, num_classes: int):
    """A `python:` model whose only hidden channels feed a GroupNorm, which a sub-network cannot narrow."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 3), torch.nn.GroupNorm(2, 8), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, num_classes))


def user_net_flat(in_channels: int, num_classes: int):
    """A `python:` model that ignores num_classes: three outputs for a ten-class dataset."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def link(path: Path, target: str) -> None:
    """Replace `path` (a folder of the run) with a symbolic link to `target`'s folder, outside the run."""
    shutil.rmtree(path)
    path.symlink_to(Path(target).parent, target_is_directory=True)


def hf_installed() -> bool:
    """True, or skip the row: transformers is an optional extra."""
    pytest.importorskip("transformers")
    return True


def hf_folder(s) -> str:
    """A Hugging Face folder whose weights file holds a tensor its config has no place for."""
    s.path("hf/config.json", json.dumps({"model_type": "resnet", "embedding_size": 8, "hidden_sizes": [8], "depths": [1]}))
    return s.path("hf/model.safetensors", save({"stray": torch.zeros(1)})).rpartition("/")[0]


def fifo_folder(s) -> str:
    """A folder of the run holding a named pipe called like an artifact (opening it would block)."""
    folder = Path(s.path("run/art/x")).parent
    folder.mkdir(parents=True, exist_ok=True)
    os.mkfifo(folder / "model.fp32.onnx")
    return str(folder)


TRAVERSAL = "x/../../../canary"  # a target name that would lead the TensorRT bundle out of the run folder
INJECTION = "x\ntouch canary-command-ran\n"  # a target name that would put a command into build_engine.sh


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
    ("model/hf-folder-without-config", lambda s: s.run(model={"arch": "hf:" + s.path("hf/model.safetensors", b"x").rpartition("/")[0]}), 2,
     ["the folder has no config.json", "save_pretrained"]),
    ("model/hf-remote-code", lambda s: s.run(model={"arch": "hf:" + s.path("hf.json", json.dumps(
        {"model_type": "resnet", "auto_map": {"AutoModelForImageClassification": "net.Net"}}))}), 2,
     ["maps to custom code (AutoModelForImageClassification)", "trust_remote_code is off"]),
    ("model/hf-not-an-image-classifier", lambda s: hf_installed() and s.run(model={"arch": "hf:" + s.path("bert.json", json.dumps(
        {"model_type": "bert"}))}), 2, ["a BertConfig ('bert') is not an image classifier"]),
    ("model/hf-weights-do-not-match", lambda s: hf_installed() and s.run(model={"arch": "hf:" + hf_folder(s)}), 2,
     ["model.safetensors: weights do not match the model", "unexpected (1): stray"]),
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
     ["w.pt: corrupt or unreadable torch file (not a complete zip archive)"]),
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
     ["data.npz: y_train: expected a 1-D array of integer class labels from 0 to 99,999", "float64"]),
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
    ("profile/corrupt-onnx", lambda s: s.profile(folder=str(Path(s.path("run/art/model.fp32.onnx", b"junk")).parent)), 2,
     ["model.fp32.onnx: ONNX Runtime cannot load or run it", "export it again"]),
    ("profile/corrupt-report", lambda s: s.profile(report="{"), 2,
     ["report.json: corrupt", "profile.json"]),
    ("profile/bad-batch", lambda s: s.profile("--batch", "1,x"), 2, ["--batch: expected comma-separated positive integers"]),
    ("profile/bad-runs", lambda s: s.profile("--runs", "0"), 2, ["--runs: expected a positive number (at most 100000), got 0"]),
    ("profile/bad-threads", lambda s: s.profile("--threads", "2,0"), 2,
     ["--threads: expected comma-separated positive integers up to 4096 such as 1,2,4, got '2,0'"]),
    ("target/zero-cpu-cores", lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(cpu_cores=0))), 2,
     ["mine.yaml: invalid target profile", "cpu_cores: Input should be greater than 0"]),
    ("profile/no-target", lambda s: ["profile", str(s.folder)], 2, ["the following arguments are required: --target"]),
    # hostile and careless input, by class ([hardening]): names that become paths or script text
    ("security/target-name-traversal", lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(
        name=TRAVERSAL, runtime="tensorrt", device_class="jetson"))), 2,
     ["mine.yaml: invalid target profile", "name: must be 1 to 64 letters, digits", "it becomes part of file names"]),
    ("security/target-name-newline", lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(name=INJECTION))), 2,
     ["mine.yaml: invalid target profile", "name: must be 1 to 64 letters, digits", "it becomes part of file names"]),
    ("security/target-alias-traversal", lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(aliases=[TRAVERSAL]))), 2,
     ["aliases[0]: must be 1 to 64 letters, digits"]),
    ("security/stage-name-newline", lambda s: s.run(stages=[{"type": "train", "name": "a\nb"}]), 2,
     ["stages[0].name: must be 1 to 64 letters, digits"]),
    ("security/foreign-run-dir", lambda s: s.run("--run-dir", str(Path(s.path("mine/notes.txt", "mine")).parent)), 2,
     ["already holds files that compress did not write (notes.txt)", "deletes only what it wrote", "--run-dir"]),
    ("security/foreign-run-dir-with-tmp-names", lambda s: s.run("--run-dir", str(Path(s.path("mine/.draft.tmp", "x")).parent)), 2,
     ["already holds files that compress did not write (.draft.tmp)"]),
    # hangs and resource exhaustion
    ("config/alias-bomb", lambda s: s.run(text=alias_bomb()), 2, ["aliases expand to more than 100,000 values"]),
    ("config/recursive-alias", lambda s: s.run(text="name: &a [*a]\n"), 2, ["an alias refers to the value that contains it"]),
    ("config/file-too-large", lambda s: s.run(text="name: tiny\n" + "# padding\n" * 120_000), 2,
     ["pipeline.yaml: too large for a configuration file (more than 1,048,576 bytes)"]),
    ("config/huge-value-echoed-short", lambda s: s.run(name="x" * 500_000), 2,
     ["name: must be 1 to 64 letters", "(500,002 characters)"]),
    ("config/deep-nesting", lambda s: s.run(text="name: " + "[" * 5000 + "]" * 5000 + "\n"), 2,
     ["nested too deeply"]),
    # values of the wrong kind
    ("config/not-utf8", lambda s: s.run(text=b"name: caf\xe9\n"), 2,
     ["pipeline.yaml:1: not UTF-8 text (byte 0xe9)"]),
    ("config/stage-type-not-a-name", lambda s: s.run(stages=[{"type": ["train"]}]), 2,
     ["stages[0].type: expected a stage name", "got ['train']"]),
    ("config/stage-type-mapping", lambda s: s.run(stages=[{"type": {"train": 1}}]), 2, ["stages[0].type: expected a stage name"]),
    ("config/duplicate-key", lambda s: s.run(text="name: a\nseed: 0\nname: b\n"), 2,
     ["pipeline.yaml:3:1: malformed YAML: duplicate key 'name' (key 'name' first given on line 1)"]),
    ("config/bool-for-number", lambda s: s.run(stages=[{"type": "train", "epochs": True}]), 2,
     ["stages[0].epochs: Input should be a valid integer (got True)"]),
    ("config/seed-overflow", lambda s: s.run(seed=2**63), 2, ["seed: Input should be less than or equal to 2147483647"]),
    ("config/timestamp-as-count", lambda s: s.run(data={**tiny_pipeline()["data"], "limit": 1_733_000_000_000_000_000}), 2,
     ["data.limit: Input should be less than or equal to 2147483647"]),
    ("config/infinite-float", lambda s: s.run(stages=[{"type": "train", "warmup_epochs": float("inf")}]), 2,
     ["stages[0].warmup_epochs: Input should be a finite number"]),
    ("config/opset-below-minimum", lambda s: s.run(export={"opset": 7}), 2,
     ["export.opset: Input should be greater than or equal to 11"]),
    ("target/infinite-rate", lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(efficiency=float("inf")))), 2,
     ["efficiency: Input should be a finite number"]),
    ("target/not-utf8", lambda s: s.run("--target", s.path("mine.yaml", b"name: caf\xe9\n")), 2,
     ["mine.yaml:1: not UTF-8 text"]),
    ("target/tensorrt-version-not-a-version", lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(
        tensorrt_version="10; rm -rf ~"))), 2, ["tensorrt_version: must be a version such as 10.3"]),
    ("target/never-deployable", lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(
        precisions=["int8"], preferred_precisions=["int8"]))), 2,
     ["export.formats: no format asked for can be deployed on target my-box, which runs int8"]),
    ("model/builder-value-error", lambda s: s.run(model={"arch": "python:test_bad_inputs:user_net_raising", "kwargs": {"depth": 7}}), 2,
     ["cannot be built with arguments {'depth': 7}", "ValueError: depth must be one of 18, 34, 50 (got 7)"]),
    ("model/python-ref-without-function", lambda s: s.run(model={"arch": "python:os"}), 2,
     ["expected 'python:module:function'"]),
    ("model/python-ref-not-callable", lambda s: s.run(model={"arch": "python:math:pi"}), 2,
     ["pi is a float, not a function"]),
    ("data/npz-label-out-of-range", lambda s: s.npz(npz_train(y_train=labels(40) * 10**9)), 2,
     ["y_train: expected a 1-D array of integer class labels from 0 to 99,999, got values 0 to 9000000000"]),
    ("data/npz-label-wrapping", lambda s: s.npz(npz_train(y_train=np.full(40, 2**63, np.uint64))), 2,
     ["y_train: expected a 1-D array of integer class labels", "9223372036854775808"]),
    ("data/npz-string-images", lambda s: s.npz(npz_train(x_train=np.full((40, 28, 28), "a"))), 2,
     ["x_train: expected images of real numbers (uint8 or float), got dtype <U1"]),
    ("data/npz-complex-images", lambda s: s.npz(npz_train(x_train=np.zeros((40, 28, 28), np.complex64))), 2,
     ["x_train: expected images of real numbers", "complex64"]),
    ("data/npz-zero-sized-images", lambda s: s.npz(npz_train(x_train=np.zeros((40, 0, 28), np.uint8))), 2,
     ["x_train: images of shape (1, 0, 28) (C, H, W) hold no pixels"]),
    ("data/npz-test-shape-mismatch", lambda s: s.npz(npz_train(x_test=np.zeros((4, 32, 32), np.uint8), y_test=labels(4))), 2,
     ["x_test images have shape (1, 32, 32) (C, H, W), the training images (1, 28, 28)"]),
    ("data/npz-test-channels-mismatch", lambda s: s.npz(npz_train(x_test=np.zeros((4, 3, 28, 28), np.uint8), y_test=labels(4))), 2,
     ["x_test images have shape (3, 28, 28)"]),
    ("data/idx-gzip-corrupt-inside", lambda s: s.idx(**{"train-images-idx3-ubyte.gz": gzip_damaged_inside(idx_bytes(images(100))),
                                                        "train-labels-idx1-ubyte": idx_bytes(labels(100))}), 2,
     ["train-images-idx3-ubyte.gz: cannot read IDX file", "copy the file again"]),
    ("model/kwargs-repeat-num-classes", lambda s: s.run(model={**MODEL, "kwargs": {**MODEL["kwargs"], "num_classes": 5}}), 2,
     ["model.kwargs: num_classes is set by the model's own `num_classes` key (default: the dataset's), not in kwargs"]),
    ("target/unknown-among-several", lambda s: s.run("--target", "x86-cpu,jetsn"), 2,
     ["unknown target 'jetsn'; did you mean 'jetson'"]),
    ("target/listed-twice", lambda s: s.run("--target", "jetson,jetson-orin-nano"), 2,
     ["target jetson-orin-nano is listed twice (as 'jetson' and 'jetson-orin-nano')"]),
    ("run/spec-json-missing-keys", lambda s: s.resume(damage=lambda stage: edit_spec(stage, lambda m: m.pop("arch"))), 2,
     ["01-train/spec.json: corrupt (model: arch: Field required)", "--no-resume"]),
    ("run/spec-json-unknown-version", lambda s: s.resume(damage=lambda stage: edit_spec(stage, lambda m: m.update(version=7))), 2,
     ["spec version 7 is not one this compress reads", "written by another version of compress"]),
    # found by a hostile-input probe: classes that ended in a traceback, a hang or a write outside the run's files
    ("config/integer-too-long", lambda s: s.run(text=f"name: tiny\nseed: {'9' * 5000}\n"), 2,
     ["pipeline.yaml:2:7: malformed YAML: integer of 5,000 digits; at most 64 bits are read"]),
    ("config/bad-tagged-value", lambda s: s.run(text="name: tiny\nseed: !!int abc\n"), 2,
     ["pipeline.yaml:2:7: malformed YAML: not an integer: 'abc'"]),
    ("config/not-a-regular-file", lambda s: [str(Path(s.path("folder.yaml/x", "x")).parent), "--quiet"], 2,
     ["folder.yaml: not a regular file (a folder, device or pipe); give a YAML file"]),
    ("target/name-too-long", lambda s: s.run("--target", "x" * 300), 2,
     ["not a target name or a profile file (File name too long)"]),
    ("target/overhead-huge", lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(layer_overhead_us=1e308))), 2,
     ["layer_overhead_us: Input should be less than or equal to 1000000"]),
    ("weights/name-too-long", lambda s: s.run(model={**MODEL, "weights": "/tmp/" + "a" * 300 + ".pt"}), 2,
     ["aaaa", "File name too long"]),
    ("weights/not-a-regular-file", lambda s: s.run(model={**MODEL, "weights": str(Path(s.path("w.pt/x", "x")).parent)}), 2,
     ["w.pt: not a regular file; give a .safetensors or torch file"]),
    ("weights/zip-header-not-a-zip", lambda s: s.weights("w.pt", b"PK\0\0\0\0\0\0"), 2,
     ["w.pt: corrupt or unreadable torch file (not a complete zip archive)"]),
    ("model/cannot-run-on-data", lambda s: s.run(model={"arch": "cnn_s", "kwargs": {"channels": [8] * 6}}), 2,
     ["model 'cnn_s' cannot run on the data's images of shape (1, 28, 28) (C, H, W): RuntimeError"]),
    ("model/wrong-output-shape", lambda s: s.run(model={"arch": "python:test_bad_inputs:user_net_flat"}), 2,
     ["outputs shape (2, 3) for a batch of 2, not (2, 10): it must return one logit per class"]),
    ("prune/output-layer-in-channel-scope", lambda s: s.run(stages=[{"type": "train"}, {"type": "prune", "method": "channel",
                                                                                         "exclude": []}]), 2,
     ["stage 'prune': exclude: the output layer '5' would lose outputs (its channels are the classes); keep it excluded"]),
    ("meal/temperature-huge", lambda s: s.run(stages=[{"type": "meal", "teachers": [{"arch": "cnn_s", "weights": "w"}],
                                                       "temperature": 1e300}]), 2,
     ["stages[0].temperature: Input should be less than or equal to 1000"]),
    ("meal/teacher-count-huge", lambda s: s.run(stages=[{"type": "meal", "teachers": [{"train": {"arch": "cnn_s", "count": 100000}}]}]), 2,
     ["stages[0].teachers[0].train.count: Input should be less than or equal to 64"]),
    ("slice/width-out-of-range", lambda s: s.run(stages=[{"type": "slice", "widths": [0, 1.0]}]), 2,
     ["stages[0].widths: every width must be in (0, 1], got 0"]),
    ("slice/widths-empty", lambda s: s.run(stages=[{"type": "slice", "widths": []}]), 2,
     ["stages[0].widths: List should have at least 1 item"]),
    ("slice/no-full-width", lambda s: s.run(stages=[{"type": "slice", "widths": [0.25, 0.5]}]), 2,
     ["stages[0].widths: must include 1.0: the full network"]),
    ("slice/depth-beyond-the-model", lambda s: s.run(stages=[{"type": "slice", "depths": [1, 3]}],
                                                     model={"arch": "resnet_s", "kwargs": {"depths": [2, 1, 1]}}), 2,
     ["stage 'slice': depths: 3 blocks per stage, but the model's longest residual stage has 2"]),
    ("slice/nothing-to-nest", lambda s: s.run(stages=[{"type": "slice"}], model={"arch": "python:test_bad_inputs:user_net_groupnorm"}), 2,
     ["stage 'slice': no channel group of the model can be nested", "1 (GroupNorm"]),
    ("slice/no-sub-network-fits", lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(budgets={"latency_ms": 1e-4})),
                                                  stages=[{"type": "slice"}]), 2,
     ["no sub-network can fit the budgets of target my-box: the smallest, w0.25, has latency_ms", "> 0.0001"]),
    ("slice/teacher-stage-missing", lambda s: s.run(stages=[{"type": "train"}, {"type": "slice", "inplace_distillation": {"stage": "big"}}]), 2,
     ["stages[1].inplace_distillation.stage: 'big' is not an earlier stage; expected one of: train"]),
    ("factory/no-slice-stage", lambda s: s.run(stages=[{"type": "train"}, {"type": "factory", "scenarios": [{"macs": 0.5}]}]), 2,
     ["stages[1]: a factory stage needs an earlier `type: slice` stage (it reads that stage's output); add one before it"]),
    ("factory/two-budgets", lambda s: s.run(stages=[{"type": "slice"}, {"type": "factory", "scenarios": [{"macs": 0.5, "latency_ms": 1}]}]), 2,
     ["stages[1].scenarios[0]", "give exactly one budget of latency_ms, macs, size_kb; got latency_ms, macs"]),
    ("factory/classes-empty", lambda s: s.run(stages=[{"type": "slice"}, {"type": "factory", "scenarios": [{"macs": 0.5, "classes": []}]}]), 2,
     ["stages[1].scenarios[0].classes: List should have at least 2 items"]),
    ("factory/classes-repeated", lambda s: s.run(stages=[{"type": "slice"}, {"type": "factory", "scenarios": [{"macs": 0.5, "classes": [3, 3]}]}]), 2,
     ["stages[1].scenarios[0].classes: lists a class twice"]),
    ("factory/class-out-of-range", lambda s: s.run(stages=[{"type": "slice"}, {"type": "factory", "scenarios": [{"macs": 0.5, "classes": [0, 12]}]}]), 2,
     ["stage 'factory': scenarios[0].classes: class 12 is out of range: the data has 10 classes (0-9)"]),
    ("factory/budget-below-the-smallest", lambda s: s.run(stages=[{"type": "slice"}, {"type": "factory", "scenarios": [{"latency_ms": 1e-6}]}]), 2,
     ["stage 'factory': scenarios[0]: budget latency_ms 1e-06 is below the smallest possible sub-network: the smallest achievable is", "ms on target x86-avx2"]),
    ("factory/unknown-target", lambda s: s.run(stages=[{"type": "slice"}, {"type": "factory", "scenarios": [{"latency_ms": 1, "target": "jetson"}]}]), 2,
     ["stage 'factory': scenarios[0].target: 'jetson' is not a target of this run (x86-avx2)"]),
    ("factory/target-without-cost-numbers", lambda s: s.run("--target", s.path("mine.yaml", profile_yaml(peak_tops={"fp32": 1.0}))), 2,
     ["peak_tops has no figure for ['int8']"]),
    ("assemble/no-factory-stage", lambda s: s.assemble("--macs", "0.5"), 2,
     ["no trained supernet and generator (no finished factory stage); add a `type: slice` stage, then a `type: factory` stage"]),
    ("assemble/two-budgets", lambda s: s.assemble("--macs", "0.5", "--size-kb", "10"), 2,
     ["argument --size-kb: not allowed with argument --macs"]),
    ("assemble/classes-not-numbers", lambda s: s.assemble("--macs", "0.5", "--classes", "0,two"), 2,
     ["--classes: expected class indices separated by commas, e.g. 0,2,5; got '0,two'"]),
    ("mamba/patch-does-not-divide", lambda s: s.run(stages=[{"type": "mamba_pkd", "students": [{"d_model": 8, "n_layers": 1,
                                                                                            "d_state": 2, "patch": 5}]}]), 2,
     ["stage 'mamba_pkd': students[0].patch: 5 does not divide the 28x28 images; use a divisor such as 1, 2, 4, 7, 14"]),
    ("mamba/d-state-zero", lambda s: s.run(stages=[{"type": "mamba_pkd", "students": [{"d_model": 8, "n_layers": 1, "d_state": 0}]}]), 2,
     ["stages[0].students", "d_state: Input should be greater than or equal to 1"]),
    ("mamba/n-layers-zero", lambda s: s.run(stages=[{"type": "mamba_pkd", "students": [{"d_model": 8, "n_layers": 0, "d_state": 2}]}]), 2,
     ["stages[0].students", "n_layers: Input should be greater than or equal to 1"]),
    ("mamba/teacher-classes-differ", lambda s: s.run(model={**MODEL, "num_classes": 12},
                                                     stages=[{"type": "mamba_pkd", "students": [{"d_model": 8, "n_layers": 1, "d_state": 2}]}]), 2,
     ["the teacher predicts 12 classes and the dataset has 10"]),
    ("data/npy-not-npz", lambda s: s.npz(npy_bytes(images(4))), 2, ["data.npz: an .npy array, not an .npz archive"]),
    ("data/npz-labels-2d", lambda s: s.npz(npz_train(y_train=labels(40)[:, None])), 2,
     ["y_train: expected a 1-D array of integer class labels from 0 to 99,999, got int64 of shape (40, 1)"]),
    ("data/npz-path-huge", lambda s: s.run(data={"dataset": "npz", "path": "/a" * 50_000}), 2,
     ["(100,002 characters): File name too long"]),
    ("run/inside-another-run", lambda s: s.resume("--run-dir", str(s.run_dir / "stages" / "01-train" / "B")), 2,
     ["lies inside the run folder", "pass a --run-dir outside it"]),
    ("run/symbolic-link-inside", lambda s: s.resume(damage=lambda stage: link(stage.parent.parent / "artifacts", s.path("outside/x", "x"))), 2,
     ["holds a symbolic link", "does not follow links there"]),
    ("export/packaging-for-another-runtime", lambda s: s.run(export={**tiny_pipeline()["export"], "formats": ["onnx", "tensorrt"]}), 2,
     ["export.formats[1]: tensorrt packages for the tensorrt runtime; target x86-avx2 runs onnxruntime"]),
    ("export/format-twice", lambda s: s.run(export={**tiny_pipeline()["export"], "formats": ["onnx", "onnx"]}), 2,
     ["export.formats[1]: onnx is listed twice"]),
    ("export/dynamo-on-an-old-runtime", lambda s: s.run("--target", "jetson-nano", export={**tiny_pipeline()["export"],
                                                                                         "exporter": "dynamo"}), 2,
     ["export.exporter: dynamo writes opset 18 or above, and target jetson-nano parses up to 13; use exporter: torchscript"]),
    ("cli/empty-run-dir", lambda s: [s.run()[0], "--run-dir", "", "--quiet"], 2, ["--run-dir: empty"]),
    ("profile/not-a-regular-file", lambda s: s.profile(folder=fifo_folder(s)), 2,
     ["model.fp32.onnx: not a regular file; export it again or remove it"]),
    ("profile/nothing-measured", lambda s: s.profile(folder=str(Path(s.path("run/art/model.int8.engine", b"x")).parent)), 2,
     ["nothing was measured (model.int8.engine: trtexec not found)"]),
    ("profile/calibrate-folder", lambda s: s.profile("--calibrate", str(s.folder)), 2, ["--calibrate:", "is a folder"]),
    ("profile/report-not-an-object", lambda s: s.profile(report="[1, 2]"), 2,
     ["report.json: corrupt (a JSON list, not a report object)", "profile.json"]),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished run of the tiny pipeline (stage folder, artifacts, report) that rows copy and damage."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(tiny_pipeline(), sort_keys=False))
    assert main([str(folder / "pipeline.yaml"), "--run-dir", str(folder / "run"), "--quiet"]) == 0
    return folder / "run"


@pytest.mark.parametrize("setup, code, words", [pytest.param(*row[1:], id=row[0]) for row in CATALOGUE])
def outside(folder: Path, run_dir: Path) -> dict[str, bytes]:
    """Every file under `folder` but those in `run_dir`, with its content."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_relative_to(run_dir)}


@pytest.mark.parametrize("setup, code, words", [pytest.param(*row[1:], id=row[0]) for row in CATALOGUE])
def test_bad_input(setup, code, words, finished, tmp_path, monkeypatch, capsys):
    """Exit code 2, one paragraph naming the problem (short, whatever the input's size), no traceback, and nothing
    written or deleted outside the run folder: a canary file survives, a canary command never runs."""
    work, home = tmp_path / "work", tmp_path / "home"  # ONNX Runtime keeps a cache of its own under $HOME/.cache
    monkeypatch.setenv("HOME", str(home))  # no dataset from this machine's caches is found instead
    monkeypatch.delenv("COMPRESS_DATA", raising=False)
    work.mkdir()
    monkeypatch.chdir(work)  # a command injected into a script would run here
    (work / "canary").mkdir()
    (work / "canary" / "keep.txt").write_text("the user's file")
    inputs = Inputs(work, finished)
    argv = setup(inputs)
    before = outside(work, inputs.run_dir)
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    err = capsys.readouterr().err
    assert status == code, err
    assert err.startswith("error: ") or "error: " in err.splitlines()[-1], err
    assert "Traceback" not in err and "\n\n" not in err.strip() and len(err) < 4000, err
    for word in words:
        assert word in err, f"{word!r} not in: {err}"
    assert outside(work, inputs.run_dir) == before, "a file outside the run folder was written or deleted"
    assert not (work / "payload-ran").exists(), "a pickled payload was executed"
    assert not list(tmp_path.rglob("canary-command-ran")), "an injected command ran"


def test_catalogue_is_documented():
    """docs/errors.md has a row for every entry of the catalogue."""
    doc = (Path(__file__).parent.parent / "docs" / "errors.md").read_text()
    assert len(CATALOGUE) >= 25 and len({row[0] for row in CATALOGUE}) == len(CATALOGUE)
    missing = [row[0] for row in CATALOGUE if f"`{row[0]}`" not in doc]
    assert not missing, f"not in docs/errors.md: {missing}"
