"""Command line: argument parsing only; the work is in pipeline.run_pipeline and the targets package."""
from __future__ import annotations

import argparse
import sys
import traceback
from typing import Callable, Optional

from . import __version__
from .errors import CompressError

USAGE_EPILOG = """commands:
  compress PIPELINE.yaml [--target NAME|PATH] ...   run the stages, export, validate, report
  compress targets                                   list hardware target profiles
  compress targets show NAME|PATH                    print one profile

examples:
  compress examples/quickstart.yaml --target jetson
  compress targets show jetson-orin-nano
"""


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="compress", description="Compress a PyTorch model for an edge target: "
                                "run a pipeline of stages, export ONNX, validate it and write a report.",
                                epilog=USAGE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pipeline", metavar="PIPELINE.yaml", help="pipeline file")
    p.add_argument("--target", metavar="NAME|PATH", help="target profile name or YAML file (overrides `target:` in the file)")
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


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    p.add_argument("--version", action="version", version=f"compress {__version__}")


def cmd_run(args: argparse.Namespace) -> int:
    from .pipeline import run_pipeline

    run_pipeline(args.pipeline, target=args.target, run_dir=args.run_dir, resume=args.resume, quiet=args.quiet, device=args.device)
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
    print(f"{'name':<20} {'aliases':<14} {'runtime':<12} {'precisions':<16} description")
    for name, p in sorted(profiles.items()):
        print(f"{name:<20} {','.join(p.aliases):<14} {p.runtime:<12} {','.join(p.precisions):<16} {p.description}")
    return 0


COMMANDS: dict[str, tuple[Callable[[], argparse.ArgumentParser], Callable[[argparse.Namespace], int]]] = {
    "targets": (targets_parser, cmd_targets),
}


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    make_parser, command = COMMANDS.get(argv[0], (run_parser, cmd_run)) if argv else (run_parser, cmd_run)
    args = make_parser().parse_args(argv[1:] if argv and argv[0] in COMMANDS else argv)
    try:
        return command(args)
    except CompressError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages are saved; run the same command again to resume after the last one.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
