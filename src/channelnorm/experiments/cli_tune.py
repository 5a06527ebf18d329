"""The body of ``channelnorm tune``: choose each norm's learning rate on a held-out validation split."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from .config import ConfigError, ExperimentConfig
from .environment import describe_environment
from .pipeline import _load, resolve_sizes
from .rundir import claim_run_kind
from .storage import locked
from .tune import LR_GRID, TUNE_SEEDS, check_sizes, read_previous_tuning, run_tuning, settings_mismatch, write_tuning
from .tuned_lrs import write_defaults


def tune_command(args: argparse.Namespace, config: ExperimentConfig, command: str) -> int:
    """Tune every norm of ``config`` over the learning-rate grid, write ``tuning.json`` and ``report.md``
    into ``config.out`` and print each chosen rate.

    Args:
        args: the parsed ``tune`` flags (reads ``lr_grid`` and ``write_defaults``).
        config: the configuration built from the flags and checked; its grid label becomes ``tune``
            (``--quick`` keeps ``quick`` and a two-rate grid).
        command: the command line as typed, recorded in the tuning's environment.

    Returns:
        The exit status, 0. Raises ConfigError for a bad ``--lrs`` or an ``--out`` that holds another
        run or a tuning of other settings; the command line turns it into its usage error.
    """
    if config.grid == "quick":
        lr_grid = args.lr_grid or (0.05, 0.2)
    else:
        lr_grid = args.lr_grid or LR_GRID
        config = config.with_(grid="tune")
    if not all(math.isfinite(lr) and lr > 0 for lr in lr_grid):
        raise ConfigError(f"--lrs: learning rates must be finite numbers > 0, got {list(lr_grid)}")
    if len(set(lr_grid)) != len(lr_grid):
        raise ConfigError(f"--lrs: a learning rate is given twice in {list(lr_grid)}")
    config = resolve_sizes(config, _load(config))
    check_sizes(config)
    environment = describe_environment(config.device, config.workers)
    environment["command"] = command
    out = Path(config.out)
    with locked(out):           # one invocation per --out at a time, as compare
        claim_run_kind(out, "tune", record=False)    # a compare run's directory is never written into
        where = str(out / "tuning.json")
        previous = read_previous_tuning(out)
        differ = settings_mismatch(previous, config, TUNE_SEEDS, where) if previous is not None else []
        if differ:      # as compare: a run directory of other settings is never overwritten
            raise ConfigError(f"--out {str(out)!r} holds a tuning of other settings ({', '.join(differ)}); "
                              f"choose another --out, or remove {where} to replace it")
        claim_run_kind(out, "tune")
        tuning = run_tuning(config, lr_grid, previous=previous, where=where)
        write_tuning(tuning, config, environment, out, previous)
    print(f"tuning: {out / 'tuning.json'}")
    for norm, result in tuning["norms"].items():
        print(f"  {norm}: chosen LR {result['chosen_lr']:g}")
    if args.write_defaults:
        print(f"defaults: {write_defaults(tuning, config)}")
    return 0
