import json
import pickle
import sys

import pytest
import torch
from safetensors.torch import save_file

from compress.checkpoint import load_model_dir, save_model_dir
from compress.errors import ModelError, RunDirError, UnknownNameError, WeightsError
from compress.models import MODELS, build_model, load_weights, make_spec
from compress.methods.pruning.channels import trial
from compress.models.resize import remove_modules, resize_changes, shape_attrs
from compress.models.spec import Drop, Resize


@pytest.mark.parametrize("arch", MODELS.names())
@pytest.mark.parametrize("in_channels, size", [(1, 28), (3, 32)])
def test_every_model_trains_a_step(arch, in_channels, size):
    model = build_model(make_spec(arch, in_channels, 7))
    logits = model(torch.randn(4, in_channels, size, size))
    assert logits.shape == (4, 7)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("arch", MODELS.names())
def test_spec_and_weights_round_trip(arch, tmp_path):
    spec = make_spec(arch, 1, 10)
    model = build_model(spec).eval()
    save_model_dir(tmp_path / "m", model, spec, {"val_accuracy": 0.5})
    loaded, loaded_spec, metrics = load_model_dir(tmp_path / "m")
    x = torch.randn(2, 1, 28, 28)
    assert loaded_spec == spec and metrics == {"val_accuracy": 0.5}
    assert torch.equal(model(x), loaded.eval()(x))


def test_architecture_kwargs():
    small = build_model(make_spec("resnet_s", 1, 10, {"widths": [8, 16], "depths": [1, 1]}))
    assert small.fc.in_features == 16
    with pytest.raises(ModelError, match="bad arguments"):
        build_model(make_spec("cnn_s", 1, 10, {"chanels": [8]}))


def test_unknown_arch_and_source():
    with pytest.raises(UnknownNameError, match="did you mean 'resnet_s'"):
        build_model(make_spec("resnet-s", 1, 10))
    with pytest.raises(UnknownNameError, match="unknown model source 'torchvison'"):
        build_model(make_spec("torchvison:resnet18", 1, 10))


def user_net(in_channels, num_classes, hidden=5):
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(hidden), torch.nn.Linear(hidden, num_classes))


def test_python_model_reference():
    model = build_model(make_spec(f"python:{__name__}:user_net", 1, 3, {"hidden": 4}))
    assert model(torch.randn(2, 1, 4, 4)).shape == (2, 3)
    with pytest.raises(ModelError, match="cannot import"):
        build_model(make_spec(f"python:{__name__}:nope", 1, 3))


@pytest.mark.skipif("torchvision" in sys.modules or __import__("importlib").util.find_spec("torchvision") is not None,
                    reason="torchvision installed")
def test_torchvision_missing_gives_install_hint():
    with pytest.raises(ModelError, match=r"pip install 'compress\[vision\]'"):
        build_model(make_spec("torchvision:resnet18", 3, 10))


def test_torchvision_adapter():
    pytest.importorskip("torchvision")
    model = build_model(make_spec("torchvision:resnet18", 1, 10))
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 10)


def test_timm_adapter():
    pytest.importorskip("timm")
    assert build_model(make_spec("timm:resnet18", 1, 10))(torch.randn(1, 1, 64, 64)).shape == (1, 10)


@pytest.fixture
def cnn():
    return build_model(make_spec("cnn_s", 1, 10, {"channels": [4, 8]}))


def test_weights_from_safetensors_and_torch_file(cnn, tmp_path):
    save_file(cnn.state_dict(), tmp_path / "w.safetensors")
    torch.save(cnn.state_dict(), tmp_path / "w.pt")
    for name in ("w.safetensors", "w.pt"):
        other = build_model(make_spec("cnn_s", 1, 10, {"channels": [4, 8]}))
        load_weights(other, tmp_path / name)
        assert all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), cnn.state_dict().values()))


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_is_refused(cnn, tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": Payload()}, f)
    with pytest.raises(WeightsError, match="refused: the file holds pickled Python objects"):
        load_weights(cnn, path)


@pytest.mark.parametrize("content, words", [
    (b"not a safetensors file at all", "corrupt or unreadable safetensors"),
    (b"", "corrupt or unreadable safetensors"),
])
def test_corrupt_safetensors(cnn, tmp_path, content, words):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=words):
        load_weights(cnn, path)


def test_mismatched_weights_name_the_tensors(cnn, tmp_path):
    other = build_model(make_spec("cnn_s", 1, 10, {"channels": [4, 16]}))
    save_file(other.state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(WeightsError, match=r"shape mismatch \(\d+\): .*file \(16"):
        load_weights(cnn, tmp_path / "w.safetensors")
    save_file({"x": torch.zeros(1)}, tmp_path / "x.safetensors")
    with pytest.raises(WeightsError, match=r"missing .*unexpected \(1\): x"):
        load_weights(cnn, tmp_path / "x.safetensors")


def test_missing_weights_file(cnn, tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        load_weights(cnn, tmp_path / "none.safetensors")


def test_a_version_1_spec_folder_still_loads(tmp_path):
    """Run folders of compress 0.1 wrote the spec as a dict with `resize` and `dropped` keys; they load as version 2."""
    spec = make_spec("resnet_s", 1, 10, {"widths": [8, 16], "depths": [1, 1]})
    full = build_model(spec)
    pruned = trial(full, torch.zeros(1, 1, 28, 28), ["fc"], 0.5, 1)
    resize = resize_changes(shape_attrs(full), shape_attrs(pruned))
    remove_modules(pruned, ["blocks.0"])
    save_model_dir(tmp_path / "m", pruned, spec.then(Resize(modules=resize), Drop(modules=["blocks.0"])), {})
    meta = json.loads((tmp_path / "m" / "spec.json").read_text())
    meta["model"] = {"arch": "resnet_s", "in_channels": 1, "num_classes": 10, "kwargs": spec.kwargs, "resize": resize,
                     "dropped": ["blocks.0"]}
    (tmp_path / "m" / "spec.json").write_text(json.dumps(meta))
    loaded, loaded_spec, _ = load_model_dir(tmp_path / "m")
    assert [t.kind for t in loaded_spec.transforms] == ["resize", "drop"] and loaded_spec.version == 2
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(pruned.eval()(x), loaded.eval()(x))


@pytest.mark.parametrize("change, words", [
    ({"version": 9}, ["spec version 9 is not one this compress reads"]),
    ({"arch": None}, ["model: arch:"]),
    ({"transforms": [{"kind": "melt"}]}, ["model: transforms[0]"]),
])
def test_a_bad_spec_json_names_the_problem(tmp_path, change, words):
    spec = make_spec("cnn_s", 1, 10)
    save_model_dir(tmp_path / "m", build_model(spec), spec, {})
    meta = json.loads((tmp_path / "m" / "spec.json").read_text())
    meta["model"] = {k: v for k, v in {**meta["model"], **change}.items() if v is not None}
    (tmp_path / "m" / "spec.json").write_text(json.dumps(meta))
    message = str(pytest.raises(RunDirError, load_model_dir, tmp_path / "m").value)
    assert all(w in message for w in words) and "delete" in message, message
