import pytest
import yaml

from compress.errors import TargetError
from compress.targets import registry, resolve
from compress.metrics import LayerCost
from compress.targets.cost import estimate_latency_ms, peak_terms_ms


@pytest.mark.parametrize("name", registry().names())
def test_every_bundled_profile_is_valid(name):
    profile = resolve(name)
    assert set(profile.preferred_precisions) <= set(profile.precisions) <= set(profile.peak_tops)


def test_alias_resolves_to_profile():
    assert resolve("jetson") is resolve("jetson-orin-nano")


def user_profile(**change):
    fields = resolve("x86-avx2").model_dump(mode="json")
    fields.update(name="my-box", aliases=[], **change)
    return fields


def test_user_profile_from_path(tmp_path):
    path = tmp_path / "box.yaml"
    path.write_text(yaml.safe_dump(user_profile()))
    assert resolve(str(path)).name == "my-box"


@pytest.mark.parametrize("change, words", [
    ({"runtime": "openvino"}, ["runtime", "'onnxruntime' or 'tensorrt'"]),
    ({"preferred_precisions": ["fp16"]}, ["preferred_precisions ['fp16'] are not in precisions"]),
    ({"precisions": ["fp32", "fp16"], "preferred_precisions": ["fp16"]}, ["peak_tops has no figure for ['fp16']"]),
    ({"turbo": True}, ["turbo: unknown key"]),
])
def test_invalid_profile_names_the_field(tmp_path, change, words):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(user_profile(**change)))
    message = str(pytest.raises(TargetError, resolve, str(path)).value)
    assert str(path) in message and all(w in message for w in words)


def test_missing_profile_file(tmp_path):
    with pytest.raises(TargetError, match="file not found"):
        resolve(str(tmp_path / "none.yaml"))


def test_cost_model_adds_compute_memory_and_overhead_terms():
    jetson = resolve("jetson")
    conv = LayerCost("conv", macs=10**9, weights=1000, inputs=10, outputs=10)
    fc = LayerCost("fc", macs=1, weights=10**8, inputs=10, outputs=10)
    compute, memory = peak_terms_ms([conv, fc], "int8", jetson, batch=2)
    assert compute == pytest.approx(1e3 * 2 * (10**9 + 1) * 2 / 20e12)
    assert memory == pytest.approx(1e3 * (1000 + 10**8 + 2 * 40) / 68e9)
    expected = compute / jetson.efficiency + memory / jetson.efficiency + 2 * jetson.layer_overhead_us / 1e3
    assert estimate_latency_ms([conv, fc], "int8", jetson, batch=2) == pytest.approx(expected)
    faster_memory = jetson.model_copy(update={"memory_efficiency": 1.0})
    assert estimate_latency_ms([conv, fc], "int8", faster_memory, batch=2) < expected


def test_host_profile_describes_this_machine():
    host = resolve("host")
    assert host.host and host.runtime == "onnxruntime" and host.peak_tops["int8"] >= host.peak_tops["fp32"]


def test_precision_the_runtime_lacks_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(user_profile(precisions=["fp32", "fp16"], preferred_precisions=["fp16"],
                                                peak_tops={"fp32": 1, "fp16": 2})))
    with pytest.raises(TargetError, match=r"precisions \['fp16'\] are not run by any of the execution providers"):
        resolve(str(path))
