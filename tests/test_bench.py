"""The headline benchmark runs end to end on a slice of the bundled data, so `bench/e2e.py` cannot rot."""
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
ROWS = ["fp32 reference", "NNCF INT8 alone", "ours, fp32", "ours: deployable", "ours, sliced", "ours, sliced + INT8",
        "torch-pruning one-shot", "torch-pruning one-shot + INT8",
        "torch-pruning iterative", "torch-pruning iterative + INT8", "small dense from scratch", "small dense from scratch + INT8",
        "small dense, the reference's budget", "small dense, the reference's budget + INT8"]


def test_e2e_benchmark_writes_its_table_verdicts_and_plot(tmp_path):
    from e2e import SLICE_WIDTHS

    out, plot = tmp_path / "benchmarks.md", tmp_path / "pareto.svg"
    cmd = [sys.executable, "bench/e2e.py", "--dataset", "bundled", "--limit", "400", "--reference-epochs", "1", "--levels", "8",
           "--budgets", "2", "--seeds", "0", "--methods", "ours", "one-shot", "iterative", "small", "small-full", "slice", "--runs", "2", "--rounds", "1", "--work-dir", str(tmp_path / "work"), "--out", str(out),
           "--plot", str(plot), "--quiet"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    main = text[:text.index("The slicing pipeline's sub-networks")]
    table = [line.split("|")[1].strip() for line in main.splitlines() if line.startswith("| ") and not line.startswith("| row")]
    assert [re.sub(r"^ours: deployable .*", "ours: deployable", name) for name in table] == ROWS
    assert "- **1/8 of the MACs, E = 2**" in text and "    - vs small dense, the reference's budget (1/8, E=1):" in text
    assert "measured GEMM peak (fp32 " in text and "Reference validation accuracy by epoch: 1:" in text and "Summary: b32 " in text
    assert "  - peers ahead of ours (the same test the other way): " in text
    quoted = text[text.index("```yaml"):]
    assert "type: prune" in quoted and "distill: {}" in quoted and "weights:" in quoted and "type: slice" in quoted
    assert not re.search(r":\s+/", quoted)  # no absolute path of this machine
    members = [line.split("|")[1].strip() for line in text[len(main):].splitlines() if line.startswith("| slice ")]
    assert members == [f"slice w{w:g}" for w in SLICE_WIDTHS]  # one run's whole grid, every member distinct
    assert "(ours, sliced + INT8, " in text and "; not counted in the summary):" in text
    svg = ET.parse(plot).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(svg.findall(".//{http://www.w3.org/2000/svg}circle")) == len(ROWS) + len(members)
    assert os.cpu_count() == 1 or "at 1)" in text  # our artifact's speed-up is also given on one thread


def row(accuracies, b1, b32):
    """A peer row of seeds with these test accuracies and latencies."""
    import torch
    from e2e import Row, Run

    return Row("r", "peer", 8, 3, "fp32", [Run(s, torch.nn.Identity(), "", 1.0, {"accuracy": a, "b1": b1, "b32": b32})
                                           for s, a in enumerate(accuracies)])


def test_a_gap_counts_only_beyond_the_seed_spread_and_at_no_higher_latency():
    from e2e import ahead

    ours = row([92.0, 92.2, 92.4], 0.1, 2.0)  # mean 92.2, std 0.2
    assert ahead(ours, row([91.5, 91.6, 91.7], 0.1, 2.0)) == {"b1": True, "b32": True}  # gap 0.6 > spread 0.3
    assert ahead(ours, row([91.8, 92.0, 92.2], 0.1, 2.0)) == {"b1": False, "b32": False}  # gap 0.2 within spread 0.4
    assert ahead(ours, row([91.5, 91.6, 91.7], 0.2, 1.0)) == {"b1": True, "b32": False}  # slower at batch 32
    assert ahead(ours, row([91.5, 91.6, 91.7], 0.098, 1.95)) == {"b1": True, "b32": True}  # within 5% counts as equal


def test_the_verdict_says_when_a_peer_is_ahead_of_ours():
    from e2e import verdict

    ours = row([92.0, 92.2, 92.4], 0.1, 2.0)
    assert verdict(ours, row([92.9, 93.0, 93.1], 0.1, 4.0)).endswith("; it is ahead of ours at b1")  # slower at batch 32 only
    assert "ahead of ours" not in verdict(ours, row([92.9, 93.0, 93.1], 0.2, 4.0))  # more accurate, but slower at both
    assert "ahead of ours" not in verdict(ours, row([92.1, 92.2, 92.3], 0.1, 2.0))  # within the spread


def test_our_pipeline_variants_are_valid_pipeline_files_that_spend_the_same_budget(tmp_path):
    """`--ours prune-distill` (the default) is one prune stage distilling from the reference for the whole budget;
    `--ours prune+meal` splits the budget between pruning and MEAL."""
    from compress.pipeline_file import load_pipeline
    from e2e import parse_args, pipeline_file

    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"")
    stages = {}
    for ours in ("prune+meal", "prune-distill"):
        path = tmp_path / ours / "e2e.yaml"
        pipeline_file(parse_args(["--dataset", "bundled", "--ours", ours]), 8, 3, 0, weights, path)
        stages[ours] = [(s.type, s.config.epochs, getattr(s.config, "distill", None) is not None) for s in load_pipeline(path).stages]
    assert stages == {"prune+meal": [("prune", 2, False), ("meal", 1, False)], "prune-distill": [("prune", 3, True)]}


def test_the_slicing_pipeline_is_a_valid_pipeline_file_with_the_whole_budget_and_levels_pick_by_validation(tmp_path):
    """The slicing variant trains for all E epochs; each level takes the member most accurate on validation within its
    MACs (fewer MACs on a tie), and a level below the grid's narrowest member is an error naming the fix."""
    from compress.pipeline_file import load_pipeline
    from e2e import SLICE_WIDTHS, chosen_member, parse_args, slice_pipeline_file

    weights = tmp_path / "weights.safetensors"
    weights.write_bytes(b"")
    slice_pipeline_file(parse_args(["--dataset", "bundled"]), 3, 0, weights, tmp_path / "e2e-slice.yaml")
    (stage,) = load_pipeline(tmp_path / "e2e-slice.yaml").stages
    assert (stage.type, stage.config.epochs, stage.config.widths) == ("slice", 3, SLICE_WIDTHS)
    subnets = {"w0.2": {"macs_share": 0.057, "val_accuracy_recalibrated": 0.90},
               "w0.3": {"macs_share": 0.072, "val_accuracy_recalibrated": 0.91},
               "w0.35": {"macs_share": 0.106, "val_accuracy_recalibrated": 0.91},
               "w0.5": {"macs_share": 0.25, "val_accuracy_recalibrated": 0.93}}
    assert chosen_member(subnets, 1 / 16) == "w0.2" and chosen_member(subnets, 1 / 8) == "w0.3"
    with pytest.raises(SystemExit, match="add a narrower width"):
        chosen_member(subnets, 0.05)
