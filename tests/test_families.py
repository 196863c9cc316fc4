"""Model families and one run for many targets: a stage registered here returns three variants; one CLI run exports
the ones `export.variants` asks for to three targets, survives a kill, and chooses one artifact per target within its
budgets (the deployment matrix), shown in report.html."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import family_stage  # noqa: F401  (registers `type: family`)
from compress.checkpoint import load_model_dir
from compress.cli import main
from compress.targets import resolve
from compress.training import evaluate
from conftest import tiny_pipeline
from test_report_html import CHROMIUM, chromium

TARGETS = ["x86-avx512-vnni", "jetson-orin-nano", "raspberry-pi-5"]
STAGES = [{"type": "train", "epochs": 1}, {"type": "family", "epochs": 1}]
EXPORT = {"variants": ["small", "large"], "latency_runs": 2, "latency_batch_sizes": [1], "accuracy_control": False}
CHILD = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import family_stage; "
         f"from compress.cli import main; sys.exit(main(sys.argv[1:]))")


def pipeline(write_pipeline, **export) -> Path:
    return write_pipeline(tiny_pipeline(stages=STAGES, export={**EXPORT, **export}, target=None))


def run(path: Path, run_dir: Path, *args: str) -> int:
    return main([str(path), "--run-dir", str(run_dir), "--quiet", "--target", ",".join(TARGETS), *args])


@pytest.fixture(scope="module")
def family_run(tmp_path_factory):
    """A run killed after the family stage was checkpointed (during export), then run again to the end."""
    tmp = tmp_path_factory.mktemp("family")
    path = tmp / "pipeline.yaml"
    path.write_text(json.dumps(tiny_pipeline(stages=STAGES, export=EXPORT, target=None)))
    run_dir = tmp / "run"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "--run-dir", str(run_dir), "--quiet",
                              "--target", ",".join(TARGETS)], env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 300
    while not (run_dir / "stages" / "02-family" / "spec.json").exists():
        assert child.poll() is None and time.monotonic() < deadline, "the family stage did not finish"
        time.sleep(0.05)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (run_dir / "report.json").exists()
    assert run(path, run_dir) == 0
    return run_dir, json.loads((run_dir / "report.json").read_text())


def test_variants_are_checkpointed_and_resumed(family_run, tiny_data):
    run_dir, report = family_run
    assert [s["status"] for s in report["stages"]] == ["resumed", "resumed"]
    assert [v["name"] for v in report["variants"]] == ["small", "medium", "large"]
    for record in report["variants"]:
        model, spec, metrics = load_model_dir(run_dir / "stages" / "02-family" / "variants" / record["name"])
        assert spec.kwargs["channels"] == family_stage.WIDTHS[record["name"]] and metrics == record["metrics"]
        assert evaluate(model, tiny_data.val)["accuracy"] == pytest.approx(metrics["val_accuracy"])


def test_export_variants_decides_what_is_exported_for_every_target(family_run):
    run_dir, report = family_run
    made = {(a["target"], a["variant"]) for a in report["artifacts"]}
    assert made == {(t, v) for t in TARGETS for v in (None, "small", "large")}
    for a in report["artifacts"]:
        folder = run_dir / "artifacts" / a["target"] / (a["variant"] or "")
        assert a["status"] in ("ok", "rejected", "bundle"), a
        assert Path(a["path"]).parent == folder or Path(a["path"]) == folder / f"tensorrt-{a['target']}"
        if a["status"] != "bundle":  # validated by ONNX Runtime like the primary model
            assert a["accuracy"] is not None and a["latency_ms"]["1"] > 0
            assert a["precision"] != "fp32" or a["parity"]["max_abs_diff"] <= 1e-4


def test_each_target_gets_one_artifact_within_its_budgets(family_run):
    _, report = family_run
    by_path = {a["path"]: a for a in report["artifacts"]}
    assert list(report["deployments"]) == TARGETS and report["deploy"] == report["deployments"][TARGETS[0]]
    for name, deploy in report["deployments"].items():
        chosen, budgets = by_path[deploy["path"]], resolve(name).budgets
        assert chosen["target"] == name and chosen["status"] == "ok"
        assert chosen["estimated_latency_ms"] <= budgets.latency_ms
        assert budgets.memory_mb is None or chosen["estimated_memory_mb"] <= budgets.memory_mb
        rivals = [a for a in report["artifacts"] if a["target"] == name and a["status"] == "ok"]
        assert chosen["accuracy"] == max(a["accuracy"] for a in rivals)  # the most accurate model of the family
    assert (report["deployments"]["jetson-orin-nano"]["bundle"]).endswith("tensorrt-jetson-orin-nano")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (apt-get install chromium)")
def test_report_html_shows_the_family_and_the_matrix(family_run, tmp_path):
    run_dir, report = family_run
    dom = chromium("--dump-dom", (run_dir / "report.html").as_uri(), tmp=tmp_path).stdout
    assert "Deployment matrix" in dom and "Model family" in dom
    for name in TARGETS:
        assert f'aria-label="Accuracy vs latency on {name} (artifacts)"' in dom
    macs = dom[dom.index('aria-label="Accuracy vs MACs'):]
    macs = macs[:macs.index("</svg>")]
    assert all(name in macs for name in ("small", "medium", "large")) and 'class="pareto-front"' in macs
    for deploy in report["deployments"].values():
        assert Path(deploy["path"]).name in dom


def test_a_variant_no_stage_produced_is_named_with_the_ones_that_exist(write_pipeline, tmp_path, capsys):
    assert run(pipeline(write_pipeline, variants=["tiny"], formats=["onnx"]), tmp_path / "run") == 2
    assert "export.variants: 'tiny' is not a variant of this run; the variants are: small, medium, large" in capsys.readouterr().err


def test_an_unknown_target_among_several_is_named_before_anything_runs(write_pipeline, tmp_path, capsys):
    path = pipeline(write_pipeline)
    assert main([str(path), "--run-dir", str(tmp_path / "run"), "--quiet", "--target", "x86-cpu,jetsn"]) == 2
    assert "unknown target 'jetsn'; did you mean 'jetson'" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_target_dependent_stage_with_several_targets_is_refused(write_pipeline, tmp_path, capsys):
    stages = [{"type": "train"}, {"type": "prune", "method": "channel", "target_macs": 0.7}]
    path = write_pipeline(tiny_pipeline(stages=stages, targets=TARGETS[:2], target=None))
    assert main([str(path), "--run-dir", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "stages[1] (prune): its result depends on the target: its channel counts round to the target's " \
           "channel_alignment (set round_to)" in err and "x86-avx512-vnni, jetson-orin-nano" in err
    assert not (tmp_path / "run").exists()  # refused before anything ran
    fixed = write_pipeline(tiny_pipeline(stages=[stages[0], {**stages[1], "round_to": 4, "schedule": {"frequency": 2}}],
                                         targets=TARGETS[:2], target=None, export={**EXPORT, "variants": "primary"}), "fixed.yaml")
    assert main([str(fixed), "--run-dir", str(tmp_path / "fixed"), "--quiet"]) == 0


def test_profiling_a_variant_folder_of_one_target_updates_the_run_report(family_run):
    run_dir, _ = family_run
    folder = run_dir / "artifacts" / "x86-avx512-vnni" / "small"
    assert main(["profile", str(folder), "--target", "host", "--runs", "2", "--batch", "1", "--quiet"]) == 0
    profile = json.loads((run_dir / "report.json").read_text())["profile"]
    assert [r["file"] for r in profile["results"]] == ["model.fp32.onnx", "model.int8.onnx"]
