"""torchrun: two CPU processes (gloo) train like one process and only rank 0 writes."""
import json
import os
import subprocess
import sys


from compress.cli import main
from compress.run_folder import MARKER
from conftest import tiny_pipeline

STAGES = [{"type": "train", "epochs": 2, "lr": 0.05}, {"type": "train", "epochs": 1, "lr": 0.01}]


def torchrun(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "0",
           "--rdzv_backend", "c10d", "--rdzv_endpoint", "localhost:0", "-m", "compress.cli", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)


def test_two_process_run_matches_single_process(write_pipeline, tmp_path):
    path = write_pipeline(tiny_pipeline(stages=STAGES, data={"dataset": "bundled", "limit": 512, "batch_size": 64,
                                                            "calibration_size": 64}))
    single, multi = tmp_path / "single", tmp_path / "ddp"
    assert main([str(path), "--run-dir", str(single), "--quiet"]) == 0
    result = torchrun([str(path), "--run-dir", str(multi), "--quiet"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((d / "report.json").read_text()) for d in (single, multi))
    assert [s["status"] for s in two["stages"]] == ["ran", "ran"]
    # each rank sees half of every global batch; BatchNorm statistics differ, so results agree within a tolerance
    for a, b in zip(one["stages"], two["stages"]):
        assert abs(a["metrics"]["val_accuracy"] - b["metrics"]["val_accuracy"]) < 0.08
    assert abs(one["stages"][0]["metrics"]["history"][0]["train_loss"] - two["stages"][0]["metrics"]["history"][0]["train_loss"]) < 0.15
    assert two["artifacts"][0]["parity"]["max_abs_diff"] <= 1e-4
    # files are written once, by rank 0: one folder per stage, no stray temporary files
    assert sorted(p.name for p in (multi / "stages").iterdir()) == ["01-train", "02-train"]
    assert not [p for p in multi.rglob("*") if p.name.startswith(".") and p.name != MARKER]
    assert result.stdout.count("stage") == 0  # --quiet on every rank


def test_resume_under_torchrun(write_pipeline, tmp_path):
    path = write_pipeline(tiny_pipeline(stages=STAGES))
    run_dir = tmp_path / "run"
    assert main([str(path), "--run-dir", str(run_dir), "--quiet"]) == 0
    result = torchrun([str(path), "--run-dir", str(run_dir)], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [s["status"] for s in json.loads((run_dir / "report.json").read_text())["stages"]] == ["resumed", "resumed"]
    assert result.stderr.count("resuming") == 1  # only rank 0 speaks


def discriminator_after_steps(rank: int, world_size: int, init_file: str, out: str) -> None:
    """One process: three discriminator steps on this rank's own logits; saves the resulting weights."""
    import torch
    import torch.distributed as dist

    from compress.methods.distill.adversary import Adversary, Discriminator
    from compress.distributed import SINGLE, Distributed

    torch.set_num_threads(1)
    if world_size > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # the MEAL stage seeds identically on every rank before building the discriminator
    adversary = Adversary(Discriminator(10, [8]), lr=1e-2, group=Distributed(rank, world_size) if world_size > 1 else SINGLE)
    data = torch.Generator().manual_seed(100 + rank)
    for _ in range(3):
        adversary.step(torch.randn(16, 10, generator=data), torch.randn(16, 10, generator=data) * 3)
    torch.save(adversary.discriminator.state_dict(), out)
    if world_size > 1:
        dist.destroy_process_group()


def spawned(rank: int, init_file: str, outs: list[str]) -> None:
    discriminator_after_steps(rank, len(outs), init_file, outs[rank])


def test_meal_discriminator_stays_identical_across_ranks(tmp_path):
    import torch
    import torch.multiprocessing as mp

    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    mp.spawn(spawned, args=(str(tmp_path / "init"), outs), nprocs=2)
    discriminator_after_steps(0, 1, "", str(tmp_path / "single.pt"))
    a, b, alone = (torch.load(p, weights_only=True) for p in (*outs, tmp_path / "single.pt"))
    assert all(torch.equal(a[k], b[k]) for k in a)  # gradients averaged across ranks: every rank holds the same one
    assert not all(torch.equal(a[k], alone[k]) for k in a)  # and it learned from both ranks' logits
