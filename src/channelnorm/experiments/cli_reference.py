"""The command line's reference page (docs/cli.md), rendered from the argparse parser itself so that it
lists every flag with its help text; a test checks the committed page against this rendering.

Regenerate after changing a flag: ``PYTHONPATH=src python -m channelnorm.experiments.cli_reference > docs/cli.md``.
"""
from __future__ import annotations

import argparse
from typing import Optional

from .cli import build_parser

_WIDTH = 100  # usage lines are wrapped at a fixed width, not the terminal's, so the page is reproducible


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.HelpFormatter(prog, width=_WIDTH)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _rows(parser: argparse.ArgumentParser) -> list[str]:
    formatter = _formatter(parser.prog)
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            metavar = "" if action.nargs == 0 else " " + formatter._metavar_formatter(action, action.dest.upper())(1)[0]
            names = ", ".join(f"`{s}{metavar}`" for s in action.option_strings)
        else:
            names = f"`{action.metavar or action.dest}`" + (" ..." if action.nargs in ("+", "*") else "")
        help_text = formatter._expand_help(action) if action.help else ""
        rows.append(f"| {names} | {_cell(help_text)} |")
    return rows


def render(parser: Optional[argparse.ArgumentParser] = None) -> str:
    """Markdown for every command of ``parser`` (default: ``build_parser()``): usage, description and a
    table of its arguments and flags with their help.

    Args:
        parser: the top-level parser with its subcommands. Default: None (``build_parser()``).

    Returns:
        The page, ending with a newline.
    """
    parser = parser or build_parser()
    parser.formatter_class = _formatter
    lines = ["# Command line", "",
             "Every command and flag of `channelnorm` (also `python -m channelnorm ...`; without arguments",
             "`python -m channelnorm` runs a seconds-long demo instead), rendered from the parser itself",
             "(`channelnorm.experiments.cli_reference`); `channelnorm COMMAND --help` prints the same. The",
             "[experiment guide](experiment.md) explains the protocol behind the flags.", "",
             "```text", parser.format_usage().strip(), "```", "", _cell(parser.description or ""), "",
             "| argument | what |", "|---|---|", *_rows(parser), ""]
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for name, sub in action.choices.items():
            sub.formatter_class = _formatter
            lines += [f"## `channelnorm {name}`", "", "```text", sub.format_usage().strip(), "```", "",
                      _cell(sub.description or ""), "", "| argument | what |", "|---|---|", *_rows(sub), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(), end="")
