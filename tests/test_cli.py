import pytest

from compress import __version__
from compress.cli import main
from conftest import tiny_pipeline


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "--target" in out and "compress targets" in out and "--no-resume" in out


def test_targets_list_and_show(capsys):
    assert main(["targets"]) == 0
    out = capsys.readouterr().out
    assert "jetson-orin-nano" in out and "jetson" in out and "nvidia-a100" in out and "x86-cpu" in out
    assert main(["targets", "show", "jetson"]) == 0
    assert "name: jetson-orin-nano" in capsys.readouterr().out


ERRORS = [
    # (pipeline change, extra CLI args, words in the one-paragraph error)
    ({}, ["--target", "jetsn"], ["unknown target 'jetsn'", "did you mean 'jetson'"]),
    ({"target": None}, [], ["no target", "--target"]),
    ({"stages": [{"type": "trian"}]}, [], ["stages[0].type", "did you mean 'train'"]),
    ({"data": {"dataset": "mnist", "root": "/nonexistent"}}, [], ["dataset 'mnist' not found", "/nonexistent"]),
    ({"model": {"arch": "cnn_s", "weights": "/nonexistent.safetensors"}}, [], ["weights file not found"]),
    ({"export": {"formats": ["onnx-fp64"]}}, [], ["export.formats[0]", "unknown export format"]),
    ({"export": {"opset": 30}}, [], ["export.opset", "maximum opset 21"]),
    ({}, ["--device", "cuda"], ["no CUDA device"]),
]


@pytest.mark.parametrize("change, args, words", ERRORS)
def test_errors_are_one_paragraph_with_exit_code_2(write_pipeline, tmp_path, capsys, change, args, words):
    path = write_pipeline(tiny_pipeline(**change))
    assert main([str(path), "--run-dir", str(tmp_path / "run"), "--quiet", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in err


def test_debug_shows_traceback(write_pipeline, tmp_path, capsys):
    path = write_pipeline(tiny_pipeline(stages=[{"type": "trian"}]))
    assert main([str(path), "--debug", "--quiet"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_unwritable_run_dir(write_pipeline, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main([str(write_pipeline(tiny_pipeline())), "--run-dir", str(blocker / "run"), "--quiet"]) == 2
    assert "is not writable" in capsys.readouterr().err
