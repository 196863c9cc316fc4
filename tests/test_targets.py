import pytest
import yaml

from compress.errors import TargetError
from compress.targets import registry, resolve
from compress.targets.cost import estimate_latency_ms


@pytest.mark.parametrize("name", registry().names())
def test_every_bundled_profile_is_valid(name):
    profile = resolve(name)
    assert set(profile.preferred_precisions) <= set(profile.precisions) <= set(profile.peak_tops)


def test_alias_resolves_to_profile():
    assert resolve("jetson") is resolve("jetson-orin-nano")


def user_profile(**change):
    fields = resolve("x86-cpu").model_dump(mode="json")
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


def test_roofline_is_compute_or_memory_bound():
    jetson = resolve("jetson")
    compute = estimate_latency_ms(macs=10**9, params=1000, precision="fp16", profile=jetson)
    assert compute == pytest.approx(1e3 * 2e9 / (10e12 * 0.2))
    memory = estimate_latency_ms(macs=1, params=10**8, precision="int8", profile=jetson)
    assert memory == pytest.approx(1e3 * 1e8 / (68e9 * 0.2))
