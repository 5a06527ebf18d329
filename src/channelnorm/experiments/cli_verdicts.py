"""The body of ``channelnorm verdicts``: the pre-registered claims on finished compare runs, pooled."""
from __future__ import annotations

import argparse
from pathlib import Path

from .across import pooled_claims, render_pooled
from .config import ConfigError
from .rundir import OUTPUTS


def verdicts_command(args: argparse.Namespace, parser: argparse.ArgumentParser, command: str) -> int:
    """Print the pooled claims' table of ``args.runs`` and, with ``--out``, also write it there.

    Args:
        args: the parsed ``verdicts`` arguments (``runs``: run directories; ``out``: a Markdown file or None).
        parser: the ``verdicts`` subparser; a bad run or ``--out`` exits through its ``error`` (status 2).
        command: the command line as typed, quoted at the top of the table.

    Returns:
        The exit status, 0.
    """
    if args.out is not None and args.out.name in OUTPUTS and any(
            args.out.resolve().parent == Path(run).resolve() for run in args.runs):
        parser.error(f"--out {str(args.out)!r} is one of the compared runs' own files; write the table elsewhere")
    try:
        text = (f"# {len(args.runs)} runs pooled: the pre-registered claims on every independent seed\n\n"
                f"Command: `{command}`\n\n" + render_pooled(pooled_claims(args.runs)))
        if args.out is not None:
            args.out.write_text(text, encoding="utf-8")
    except ConfigError as error:
        parser.error(str(error))
    except OSError as error:
        parser.error(f"--out {str(args.out)!r} cannot be written: {error}")
    print(text, end="")
    return 0
