"""RunContext: what a stage may use while it runs (data, device, seed, targets, its own output folder)."""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch

from .config import DataConfig
from .data import DataBundle
from .distributed import SINGLE, Distributed

if TYPE_CHECKING:
    from .targets import TargetProfile


@dataclass
class RunContext:
    data: DataBundle
    data_config: DataConfig = field(default_factory=DataConfig)
    run_dir: Path = Path("runs/unnamed")
    target: Optional["TargetProfile"] = None  # the run's first target (the only one, for most runs)
    device: torch.device = torch.device("cpu")
    seed: int = 0
    quiet: bool = True
    stage_name: str = "train"
    stage_dir: Optional[Path] = None  # the running stage's private folder, kept across interrupted runs
    dist: Distributed = SINGLE  # torchrun rank and world size; only rank 0 writes files
    earlier: dict[str, Path] = field(default_factory=dict)  # this run's finished stages: label -> output folder
    targets: list["TargetProfile"] = field(default_factory=list)  # every target of the run (stages that make a variant per target)

    def log(self, message: str) -> None:
        """A progress line on stderr, unless quiet."""
        say(message, self.quiet)


def say(message: str, quiet: bool) -> None:
    """Print a progress line on stderr unless `quiet`."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
