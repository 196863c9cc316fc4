"""Command line: argument parsing only; the work is in pipeline.run_pipeline and the targets package."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import traceback
from contextlib import contextmanager
from typing import Callable, Optional

from . import __version__
from .errors import CompressError, shown

USAGE_EPILOG = """commands:
  compress PIPELINE.yaml [--target NAME[,NAME]] ... run the stages, export, validate, report (for each target)
  compress targets                                   list hardware target profiles
  compress targets show NAME|PATH                    print one profile
  compress profile ARTIFACTS_DIR --target NAME       measure artifacts on this machine (e.g. on the device)
  compress assemble RUN_DIR --target NAME --macs X   a model for a budget from a run's factory stage, in seconds

examples:
  compress examples/quickstart.yaml --target jetson
  compress targets show jetson-orin-nano
"""


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress", description="Compress a PyTorch model for an edge target: "
                                "run a pipeline of stages, export ONNX, validate it and write a report.",
                                epilog=USAGE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pipeline", metavar="PIPELINE.yaml", help="pipeline file")
    p.add_argument("--target", metavar="NAME|PATH[,...]", help="target profile name or YAML file, or several separated by "
                                                                "commas (overrides `target:`/`targets:` in the file)")
    p.add_argument("--run-dir", metavar="DIR", help="run folder (default: runs/<name>)")
    p.add_argument("--no-resume", dest="resume", action="store_false", help="rerun every stage instead of reusing finished ones")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="training device (default: cpu)")
    add_common(p)
    return p


def targets_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress targets", description="List hardware target profiles or show one.")
    p.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    p.add_argument("name", nargs="?", metavar="NAME|PATH")
    add_common(p)
    return p


def profile_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress profile", description="Measure exported artifacts on this machine: ONNX "
                                "Runtime with the target's execution providers, trtexec for TensorRT engines. Writes "
                                "profile.json and merges it into the run's report.json.")
    p.add_argument("artifacts", metavar="ARTIFACTS_DIR", help="a run's artifacts folder or a device bundle")
    p.add_argument("--target", metavar="NAME|PATH", required=True, help="target profile of this machine")
    p.add_argument("--batch", default="1,32", help="comma-separated batch sizes (default: 1,32)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per batch size and setting after warm-up, in "
                                                         "alternating rounds (default: 50)")
    p.add_argument("--threads", help="comma-separated ONNX Runtime intra-op thread counts to sweep on a CPU target "
                                     "(default: 1 to the target's cpu_cores, at most this machine's)")
    p.add_argument("--calibrate", metavar="OUT.yaml", help="also fit the cost model to these measurements and save the calibrated profile")
    add_common(p)
    return p


def assemble_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress assemble", description="Assemble a model for a budget (and a class subset) "
                                "from a finished run's factory stage, without search; export and validate it for the "
                                "target. Writes RUN_DIR/assembled/<name>/ and prints each step's wall time.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder whose pipeline has a factory stage")
    p.add_argument("--target", metavar="NAME|PATH", required=True, help="target profile the model is for")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--latency-ms", type=float, help="batch-1 latency budget on the target (cost model)")
    budget.add_argument("--macs", type=float, help="MACs budget as a share of the full supernet's (0-1]")
    budget.add_argument("--size-kb", type=float, help="weights size budget on the target's precision, kB")
    p.add_argument("--classes", metavar="I,J,...", help="the classes the model predicts (its head keeps only those)")
    add_common(p)
    return p


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"compress {__version__}")


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline_file import load_pipeline

    if args.run_dir == "":
        raise CompressError("--run-dir: empty; name a folder, or leave the option out for runs/<name>")
    pipeline = load_pipeline(args.pipeline)  # a malformed file fails here, before torch is imported

    from .pipeline import run_pipeline

    run_pipeline(pipeline, target=args.target, run_dir=args.run_dir, resume=args.resume, quiet=args.quiet, device=args.device)
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    import yaml

    from .targets import registry, resolve

    if args.action == "show":
        if not args.name:
            raise CompressError("compress targets show: name a target, e.g. `compress targets show jetson`")
        print(yaml.safe_dump(resolve(args.name).model_dump(mode="json"), sort_keys=False), end="")
        return 0
    profiles = {}
    for name in registry().names():
        profile = registry().get(name)
        profiles.setdefault(profile.name, profile)
    print(f"{'name':<18} {'aliases':<18} {'runtime':<12} {'precisions':<15} description")
    for name, p in sorted(profiles.items()):
        print(f"{name:<18} {','.join(p.aliases):<18} {p.runtime:<12} {','.join(p.precisions):<15} {p.description}")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .targets import resolve
    from .targets.profiling import (calibrate, check_failures, onnx_layer_costs, parse_counts, profile_artifacts,
                                    summary_lines, write_calibrated)

    target, folder = resolve(args.target), Path(args.artifacts)
    if args.calibrate and Path(args.calibrate).is_dir():
        raise CompressError(f"--calibrate: {args.calibrate} is a folder; give the file to write, e.g. host-calibrated.yaml")
    if not 1 <= args.runs <= 100_000:
        raise CompressError(f"--runs: expected a positive number (at most 100000), got {args.runs}")
    threads = parse_counts(args.threads, "--threads", 4096, "1,2,4") if args.threads is not None else None
    profile = profile_artifacts(folder, target, parse_counts(args.batch), args.runs, threads=threads)
    if not args.quiet:
        print("\n".join(summary_lines(profile)))
        print(f"wrote {folder / 'profile.json'}")
    check_failures(profile, folder)
    if args.calibrate:
        layers = {r["file"]: onnx_layer_costs(folder / r["file"]) for r in profile["results"] if r["file"].endswith(".onnx")}
        calibrated = calibrate(profile, target, layers)
        write_calibrated(calibrated, Path(args.calibrate), profile)
        if not args.quiet:
            print(f"calibrated: efficiency {calibrated.efficiency:.3g}, layer overhead {calibrated.layer_overhead_us:.3g} us "
                  f"-> {args.calibrate} (use it with --target {args.calibrate})")
    return 0


def cmd_assemble(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .assemble import assemble_command

    budget = {"latency_ms": args.latency_ms, "macs": args.macs, "size_kb": args.size_kb}
    assemble_command(Path(args.run_dir), args.target, budget, args.classes, args.quiet)
    return 0


COMMANDS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "targets": (targets_parser, cmd_targets),
    "profile": (profile_parser, cmd_profile),
    "assemble": (assemble_parser, cmd_assemble),
}


def message(error: Exception) -> str:
    """The paragraph an error prints: its own text, or for an OSError what failed on which path."""
    if isinstance(error, CompressError):
        return str(error)
    where = f"{shown(str(error.filename), 200)}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


def capped(text: str, limit: int = 4000) -> str:
    """`text`, its middle cut when it is longer than `limit` characters."""
    if len(text) <= limit:
        return text
    return f"{text[: limit // 2]} ... ({len(text) - limit:,} characters cut) ... {text[-limit // 2:]}"


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop): unwinds like Ctrl-C, so temporary files are removed and the run
    resumes next time."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def stop_on_sigterm():
    """While the command runs, SIGTERM raises `Terminated` (in the main thread; the old handler comes back after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    make_parser, command = COMMANDS.get(argv[0], (run_parser, cmd_run)) if argv else (run_parser, cmd_run)
    args = make_parser().parse_args(argv[1:] if argv and argv[0] in COMMANDS else argv)
    try:
        with stop_on_sigterm():
            return command(args)
    except (CompressError, OSError) as e:  # OSError: a path the file system refuses (too long, a loop of links, ...)
        if args.debug:
            traceback.print_exc()
        print(f"error: {capped(message(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        stopped, code = ("terminated (SIGTERM)", 128 + signal.SIGTERM) if isinstance(e, Terminated) else ("interrupted", 130)
        print(f"\n{stopped}: finished stages are saved; run the same command again to resume after the last one.",
              file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
