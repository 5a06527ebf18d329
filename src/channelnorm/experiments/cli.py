"""``channelnorm compare``: the command line of the experiment (DESIGN §7)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .config import CORE_NORMS, ROBUST_NORMS, ConfigError, ExperimentConfig, full_config, quick_config

NORM_GROUPS = {"core": CORE_NORMS, "robust": ROBUST_NORMS, "all": CORE_NORMS + ROBUST_NORMS}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _norm_list(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            names.extend(NORM_GROUPS.get(part.lower(), (part,)))
    return tuple(names)


def _size(text: str) -> Optional[int]:
    if text.lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="channelnorm", description="Experiments on channel normalization and its family.")
    # flags that override the preset stay absent from the namespace unless given (--train-size all is None)
    unset = argparse.SUPPRESS
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    compare = commands.add_parser(
        "compare", help="train a small residual CNN with each norm at each batch size and write a report",
        description="Train a small residual CNN with every norm at every batch size (several seeds), then write "
                    "results.csv/json, error_vs_batch.png and report.md into --out. Rerunning with the same --out "
                    "resumes: finished runs are skipped.")
    preset = compare.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny data and grid)")
    preset.add_argument("--full", action="store_true",
                        help="the full grid: core and batch-robust norms, batch sizes 2..32, 3 seeds")
    compare.add_argument("--norms", type=_norm_list, default=unset, help="comma-separated create_norm kinds, or core/robust/all "
                         f"(default: {','.join(ExperimentConfig.norms)})")
    compare.add_argument("--batch-sizes", type=_int_list, default=unset, help="comma-separated, e.g. 2,4,8,16,32")
    compare.add_argument("--seeds", type=_int_list, default=unset, help="comma-separated training seeds, e.g. 0,1,2")
    compare.add_argument("--epochs", type=float, default=unset, help="passes over the training set (same samples for every batch size)")
    compare.add_argument("--train-size", type=_size, default=unset, help="training images (synthetic count, or a CIFAR-10 subset; 'all')")
    compare.add_argument("--test-size", type=_size, default=unset, help="held-out images ('all' for CIFAR-10's 10k)")
    compare.add_argument("--data-dir", default=unset, help="CIFAR-10 python-format folder (data_batch_1..5, test_batch) "
                         "instead of the built-in synthetic set")
    compare.add_argument("--lr", type=float, dest="base_lr", default=unset, help="learning rate at batch 32 (scaled linearly)")
    compare.add_argument("--width", type=int, default=unset, help="channels of the first stage")
    compare.add_argument("--device", choices=("cpu", "cuda"), help="default cpu")
    compare.add_argument("--workers", type=int, help="parallel runs (processes, 1 thread each); default 2 on cpu, 1 on cuda")
    compare.add_argument("--out", help="run directory (default runs/compare, runs/compare-quick, runs/compare-full)")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


OVERRIDES = ("norms", "batch_sizes", "seeds", "epochs", "train_size", "test_size", "data_dir", "base_lr", "width")


def config_from_args(args: argparse.Namespace, given: set[str]) -> ExperimentConfig:
    """The preset (default, --quick or --full) with the flags the user gave on top."""
    changes: dict[str, Any] = {name: getattr(args, name) for name in OVERRIDES if name in given}
    if changes.get("data_dir") is not None:
        # one spelling per folder ('cifar/', './cifar', '/abs/cifar'), so that resuming compares folders, not text
        changes["data_dir"] = os.path.abspath(changes["data_dir"])
        changes.setdefault("train_size", None)   # real data: all of it unless --train-size says otherwise
        changes.setdefault("test_size", None)
    if any(name in changes for name in OVERRIDES):
        changes["grid"] = "custom"
    device = args.device or "cpu"
    changes["device"] = device
    changes["workers"] = args.workers if args.workers is not None else (1 if device == "cuda" else 2)
    if args.quick:
        changes.setdefault("out", args.out or "runs/compare-quick")
        return quick_config(**changes)
    if args.full:
        changes.setdefault("out", args.out or "runs/compare-full")
        return full_config(**changes)
    changes["out"] = args.out or "runs/compare"
    return ExperimentConfig(**changes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    given = {name for name in OVERRIDES if hasattr(args, name)}
    try:
        config = config_from_args(args, given)
        _check_device(config.device)
    except (ConfigError, TypeError) as error:
        parser.error(str(error))
    from .pipeline import run_compare   # heavy imports (matplotlib) only once the flags are valid

    try:
        outputs = run_compare(config, command="channelnorm " + shlex.join(argv), progress=not args.no_progress)
    except ConfigError as error:
        parser.error(str(error))
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished runs are kept in {config.out}. Run the same command again to resume.",
              file=sys.stderr)
        return 130
    for name, path in outputs.items():
        print(f"{name}: {path}")
    return 0


def _check_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} asked for, but torch {torch.__version__} sees no CUDA device")


if __name__ == "__main__":
    sys.exit(main())
