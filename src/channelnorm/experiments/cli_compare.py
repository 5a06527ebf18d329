"""The body of ``channelnorm compare``: run the experiment of a checked configuration and list its outputs."""
from __future__ import annotations

import argparse

from .config import ExperimentConfig
from .pipeline import run_compare


def compare_command(args: argparse.Namespace, config: ExperimentConfig, command: str) -> int:
    """Run the whole experiment into ``config.out`` and print each output's name and path.

    Args:
        args: the parsed ``compare`` flags (reads ``no_progress`` and ``reproduction``).
        config: the experiment's configuration, already built from the flags and checked.
        command: the command line as typed, recorded in the run's environment.

    Returns:
        The exit status, 0. Errors propagate (ConfigError, KeyboardInterrupt): the command line turns
        them into its usage error or its resume hint.
    """
    outputs = run_compare(config, command=command, progress=not args.no_progress, reproduction_dir=args.reproduction)
    for name, path in outputs.items():
        print(f"{name}: {path}")
    return 0
