import pytest

from compress.errors import UnknownNameError
from compress.export import EXPORTERS
from compress.models import MODELS
from compress.registry import Registry
from compress.stages import STAGES
from compress.targets import registry as targets


def test_miss_suggests_nearest_and_lists_known():
    r = Registry("stage")
    r.add("prune", 1)
    r.add("train", 2)
    with pytest.raises(UnknownNameError) as e:
        r.get("prnue")
    assert str(e.value) == "unknown stage 'prnue'; did you mean 'prune'? known: prune, train"


def test_miss_without_close_match_has_no_suggestion():
    r = Registry("model")
    r.add("resnet_s", 1)
    assert "did you mean" not in r.miss_message("zzz")


def test_duplicate_registration_is_refused():
    r = Registry("x")
    r.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        r.add("a", 2)


@pytest.mark.parametrize("registry, name", [(STAGES, "train"), (MODELS, "resnet_s"), (MODELS, "mobilenet_s"),
                                            (MODELS, "cnn_s"), (EXPORTERS, "onnx"), (targets(), "jetson")])
def test_builtins_are_registered(registry, name):
    assert name in registry
