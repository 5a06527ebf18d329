"""The command line's surroundings: --version, the subcommand's usage on errors found after parsing,
``python -m channelnorm COMMAND`` running the command (not the demo), and docs/cli.md listing every flag."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import channelnorm as cn
from channelnorm.experiments import cli, cli_reference

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def _run(*args):
    return subprocess.run([sys.executable, "-m", "channelnorm", *args], capture_output=True, text=True, timeout=120,
                          env=ENV, cwd=ROOT)


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"channelnorm {cn.__version__}"


def test_python_dash_m_with_arguments_is_the_command_line_not_the_demo():
    done = _run("compare", "--help")
    assert done.returncode == 0 and done.stdout.startswith("usage: channelnorm compare")
    assert "ChannelNorm vs nn.BatchNorm2d" not in done.stdout  # the demo's first line
    assert _run("--version").stdout.strip() == f"channelnorm {cn.__version__}"


@pytest.mark.parametrize("argv,command,message", [
    (["compare", "--quick", "--epochs", "-1"], "compare", "epochs must be a finite number"),
    (["tune", "--quick", "--lrs", "0.1,0.1"], "tune", "a learning rate is given twice"),
    (["verdicts", "only-one-dir"], "verdicts", "give at least two run directories"),
])
def test_errors_after_parsing_print_the_subcommands_usage(argv, command, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a refused command might write lands in the repository
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err
    assert err.startswith(f"usage: channelnorm {command} ") and f"channelnorm {command}: error:" in err


def _every_flag(parser):
    flags, parsers = set(), [parser]
    while parsers:
        p = parsers.pop()
        for action in p._actions:
            flags |= {opt for opt in action.option_strings if opt not in ("-h", "--help")}
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return flags


def test_cli_page_is_the_rendering_of_the_parser_and_lists_every_flag():
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    assert page == cli_reference.render(), (
        "docs/cli.md is out of date: PYTHONPATH=src python -m channelnorm.experiments.cli_reference > docs/cli.md")
    flags = _every_flag(cli.build_parser())
    assert {"--version", "--norms", "--lrs", "--out", "--no-progress"} <= flags
    missing = sorted(f for f in flags if f"`{f}" not in page)
    assert not missing, missing
