"""The experiment's command line (``channelnorm compare``, ``tune``, ``verdicts``): the parser, the
configuration built from its flags, and the dispatch to each command's own module (cli_compare, cli_tune,
cli_verdicts)."""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from .. import __version__
from .config import (CORE_NORMS, DATA_SETS, PREREGISTERED_THRESHOLDS, ROBUST_NORMS, ConfigError, ExperimentConfig,
                     full_config, quick_config)
from .fashion_mnist import DEFAULT_DIR as DEFAULT_FASHION_MNIST_DIR

NORM_GROUPS = {"core": CORE_NORMS, "robust": ROBUST_NORMS, "all": CORE_NORMS + ROBUST_NORMS}


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _float_list(text: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not numbers:   # an empty list would silently mean the default grid
        raise argparse.ArgumentTypeError(f"expected at least one number, got {text!r}")
    return numbers


def _norm_list(text: str) -> tuple[str, ...]:
    names: list[str] = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            names.extend(NORM_GROUPS.get(part.lower(), (part,)))
    return tuple(names)


def _lr_map(text: str) -> tuple[tuple[str, float], ...]:
    """'0.1' (every norm) is not accepted: learning rates are per norm, e.g. channel=0.1,group=0.05."""
    pairs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        try:
            pairs.append((name.strip(), float(value)))
        except ValueError:
            sep = ""
        if not sep:
            raise argparse.ArgumentTypeError(f"expected norm=lr pairs such as channel=0.1,group=0.05, got {text!r}")
    return tuple(pairs)


def _faithful(text: str) -> Optional[tuple[int, int]]:
    """'2,16' (normalization batch, SGD batch) or 'none'."""
    if text.lower() == "none":
        return None
    values = _int_list(text)
    if len(values) != 2:
        raise argparse.ArgumentTypeError(f"expected NORM_BATCH,SGD_BATCH such as 2,16 (or none), got {text!r}")
    return values


def _factors(text: str) -> tuple[float, ...]:
    """'0.5,2' or 'none' (no learning-rate grid)."""
    return () if text.lower() == "none" else _float_list(text)


def _size(text: str) -> Optional[int]:
    if text.lower() == "all":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'all', got {text!r}") from None


OVERRIDES = ("norms", "norm_batches", "coupled_batches", "seeds", "epochs", "train_size", "test_size", "data",
             "data_dir", "lrs", "width", "colour_variation", "contrast_variation", "lr_factors", "faithful_cell",
             "frozen_tail")


def _add_common(p: argparse.ArgumentParser) -> None:
    unset = argparse.SUPPRESS   # flags that override the preset stay absent unless given
    p.add_argument("--norms", type=_norm_list, default=unset,
                   help=f"comma-separated create_norm kinds, or core/robust/all (default: {','.join(CORE_NORMS)})")
    p.add_argument("--seeds", type=_int_list, default=unset, help="comma-separated training seeds")
    p.add_argument("--epochs", type=float, default=unset, help="passes over the training set (the same in every cell)")
    p.add_argument("--train-size", type=_size, default=unset, help="training images ('all' for CIFAR-10's 50k)")
    p.add_argument("--test-size", type=_size, default=unset, help="test images ('all' for CIFAR-10's 10k)")
    p.add_argument("--data", choices=DATA_SETS, default=unset,
                   help="the images: synthetic (default), cifar10 (needs --data-dir) or fashion-mnist "
                        f"(--data-dir, default {DEFAULT_FASHION_MNIST_DIR}: MNIST-format IDX files, plain or .gz)")
    p.add_argument("--data-dir", default=unset,
                   help="the folder of --data; alone, a CIFAR-10 python-format folder (--data cifar10)")
    p.add_argument("--width", type=int, default=unset, help="channels of the first stage")
    p.add_argument("--colour-variation", type=float, default=unset, help="synthetic: per-image colour variation in [0, 1]")
    p.add_argument("--contrast-variation", type=float, default=unset, help="synthetic: per-image contrast variation in [0, 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="default cpu")
    p.add_argument("--workers", type=int, help="parallel processes, 1 torch thread each (default 2 on cpu, 1 on cuda)")
    p.add_argument("--out", help="output directory")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="channelnorm", description="Experiments on channel normalization and its family.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="command")
    compare = commands.add_parser(
        "compare", help="train a small residual CNN with each norm and write a report (protocol v3)",
        description="Pre-registered claims (scope, normalization batch, convergence; Welch tests, Holm within each "
                    "family) on decoupled cells (SGD batch fixed, channel norm's normalization batch varied through "
                    "ghost batches), the Group-Norm-faithful cell, a learning-rate grid and a frozen tail; several "
                    "seeds trained as one wide network, three evaluations; writes results.json/csv, variants.json, "
                    "analysis.json, plots and report.md into --out. Rerunning with the same --out resumes: finished "
                    "cells are skipped.")
    preset = compare.add_mutually_exclusive_group()
    preset.add_argument("--quick", action="store_true", help="a seconds-long smoke run (tiny data and grid)")
    preset.add_argument("--full", action="store_true",
                        help="core and batch-robust norms, normalization batches 2..32, same protocol")
    unset = argparse.SUPPRESS
    compare.add_argument("--norm-batches", type=_int_list, default=unset,
                         help="channel norm's normalization batches in the decoupled part, e.g. 2,4,8,16,32")
    compare.add_argument("--coupled-batches", type=_int_list, default=unset,
                         help="coupled cells' batches (SGD batch = normalization batch), e.g. 2,32 (default: none; "
                              "--full: 2,32)")
    compare.add_argument("--faithful-cell", type=_faithful, default=unset, metavar="NB,SGD",
                         help="the Group-Norm-faithful cell: channel norm at normalization batch NB inside SGD batch "
                              "SGD, learning rate scaled linearly (default 2,16; 'none' to skip)")
    compare.add_argument("--lr-factors", type=_factors, default=unset,
                         help="channel norm's learning-rate grid around the tuned rate, at the smallest and the SGD "
                              "batch (default 0.5,2; 'none' to skip)")
    compare.add_argument("--frozen-tail", type=float, default=unset, metavar="SHARE",
                         help="the frozen-tail cell: channel norm at the smallest normalization batch whose last SHARE "
                              "of the steps train with population statistics held fixed (default 0.125; 0 to skip)")
    compare.add_argument("--lr", type=_lr_map, dest="lrs", default=unset,
                         help="peak learning rates per norm at the SGD batch, e.g. channel=0.1,group=0.05 "
                              "(default: the committed tuning results)")
    compare.add_argument("--reproduction", type=Path, help="a finished run of the same grid on another CPU code "
                         "path: the report says whether every verdict holds on both")
    compare.add_argument("--converged-loss", type=float,
                         help="convergence gate: a cell with a seed whose final training loss is not below this "
                              "is flagged (default 0.05, fashion-mnist 0.25, --quick 2.0; fixed before any run); it never hides an effect. Only the analysis "
                              "reads it: an --out trained under another value is re-analysed, not retrained")
    compare.add_argument("--target-error", type=float,
                         help="exploratory: steps until the per-batch test error is at most this %% (default 5, "
                              "fashion-mnist 12, --quick 80). Only the analysis reads it, as --converged-loss")
    _add_common(compare)

    tune = commands.add_parser(
        "tune", help="choose each norm's learning rate on a validation split held out of the training set",
        description="Train every norm at every learning rate of --lrs (tuning seeds 100, 101) with compare's "
                    "schedule on the training set minus --val-size images, score on those held-out images (never "
                    "the test set), and write tuning.json and report.md into --out.")
    tune.add_argument("--lrs", type=_float_list, dest="lr_grid", help="learning-rate grid (default 0.025,0.05,0.1,0.2,0.4; a choice at an edge is followed beyond it)")
    tune.add_argument("--val-size", type=int, help="held-out training images (default 2000)")
    tune.add_argument("--quick", action="store_true", help="a seconds-long smoke run")
    tune.add_argument("--write-defaults", action="store_true",
                      help="also record the chosen rates as the package's defaults for this data set "
                           "(tuned_lrs.json, for committing); norms not tuned now keep their rates if "
                           "tuned at the same SGD batch")
    _add_common(tune)

    across = commands.add_parser(
        "verdicts", help="the pre-registered claims on finished compare runs of one grid, pooled",
        description="Pool two or more finished `channelnorm compare` runs of the same grid that may differ in "
                    "their seeds and CPU code path: per-seed values merged cell by cell (a seed two runs share "
                    "counted once), the claims tested once on the pool (Welch, Holm within each family), each "
                    "run's own effect and whether its interval agrees with the first run's (every run judged "
                    "under the first run's analysis thresholds).")
    across.add_argument("runs", nargs="+", type=Path, metavar="DIR", help="run directories (--out of compare)")
    across.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    return parser


def config_from_args(args: argparse.Namespace, given: set[str], default_out: str) -> ExperimentConfig:
    """The preset (default, --quick or --full) with the flags the user gave on top."""
    changes: dict[str, Any] = {name: getattr(args, name) for name in OVERRIDES if name in given}
    if changes.get("data_dir") is not None:
        if changes.get("data") == "synthetic":
            raise ConfigError(f"--data-dir {changes['data_dir']!r} with --data synthetic: the synthetic set is "
                              "generated, not read (use --data cifar10 or fashion-mnist)")
        # one spelling per folder, so that resuming compares folders, not text
        changes["data_dir"] = os.path.abspath(changes["data_dir"])
        changes.setdefault("data", "cifar10")     # --data-dir alone means CIFAR-10
    if changes.get("data") == "fashion-mnist":
        changes.setdefault("data_dir", DEFAULT_FASHION_MNIST_DIR)   # recorded: resuming compares folders
    if changes.get("data", "synthetic") != "synthetic":
        changes.setdefault("train_size", None)   # real data: all of it unless --train-size says otherwise
        changes.setdefault("test_size", None)
    if changes:
        changes["grid"] = "custom"
    device = args.device or "cpu"
    changes["device"] = device
    changes["workers"] = args.workers if args.workers is not None else (1 if device == "cuda" else 2)
    for name in ("val_size", "converged_loss", "target_error"):   # not grid changes: the grid label stays
        if getattr(args, name, None) is not None:
            changes[name] = getattr(args, name)
    if not args.quick:      # --quick keeps its own loose thresholds (a smoke run)
        for name, value in PREREGISTERED_THRESHOLDS.get(changes.get("data", "synthetic"), {}).items():
            changes.setdefault(name, value)
    suffix = "-quick" if args.quick else "-full" if getattr(args, "full", False) else ""
    changes["out"] = args.out or default_out + suffix
    if args.quick:
        return quick_config(**changes)
    if getattr(args, "full", False):
        return full_config(**changes)
    return ExperimentConfig(**changes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``) and run its command; each command's body is its own
    module (cli_compare, cli_tune, cli_verdicts), imported only once the flags are valid (matplotlib,
    the training code).

    Args:
        argv: the arguments after the program name, e.g. ``["compare", "--quick"]``.

    Returns:
        The exit status: 0, or 130 after an interruption (finished cells are kept). A bad flag exits
        through argparse (status 2) with the subcommand's usage.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    parser = _command_parser(parser, args.command)  # errors from here on print the subcommand's usage
    if args.command == "verdicts":
        from .cli_verdicts import verdicts_command
        return verdicts_command(args, parser, "channelnorm " + shlex.join(argv))
    given = {name for name in OVERRIDES if hasattr(args, name)}
    try:
        config = config_from_args(args, given, "runs/compare" if args.command == "compare" else "runs/tune")
        _check_device(config.device)
    except (ConfigError, TypeError) as error:
        parser.error(str(error))
    command = "channelnorm " + shlex.join(argv)
    try:
        if args.command == "tune":
            from .cli_tune import tune_command
            return tune_command(args, config, command)
        from .cli_compare import compare_command
        return compare_command(args, config, command)
    except ConfigError as error:
        parser.error(str(error))
    except KeyboardInterrupt:
        print(f"\ninterrupted; finished cells are kept in {config.out}. Run the same command again to resume.",
              file=sys.stderr)
        return 130


def _command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    """The subparser of ``command`` (argparse keeps them in its subparsers action)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(command, parser)
    return parser


def _check_device(device: str) -> None:
    if device.startswith("cuda"):
        import torch
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} asked for, but torch {torch.__version__} sees no CUDA device")


if __name__ == "__main__":
    sys.exit(main())
