"""The verdicts of several finished runs of one grid side by side (``channelnorm verdicts DIR DIR ...``).

An answer counts only if it survives another seed and another machine: the runs may differ in their
seeds and their CPU code path, nothing else that decides what they train. Every run is judged under
the first run's analysis thresholds (its rows re-derived, as a ``--reproduction`` is).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .analysis import analyse, verdicts
from .config import ConfigError
from .environment import CODE_PATH_FIELDS
from .outcome import analysed_row
from .results import read_finished_run

LABEL = "channelnorm verdicts"


def verdict_table(paths: Sequence[Path]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(a name per run: its folder, seed count and CPU code path; per comparison of the first run,
    its verdict in every run). A ConfigError naming the folder for a run that is not a finished
    compare run, or whose settings differ from the first's in more than seeds."""
    if len(paths) < 2:
        raise ConfigError(f"{LABEL}: give at least two run directories, got {len(paths)}")
    runs = []
    for path in paths:
        config, rows, environment = read_finished_run(Path(path), LABEL)
        runs.append((Path(path), config, rows, environment))
    first = runs[0][1]
    wanted = {k: v for k, v in first.reproduction_identity().items() if k != "seeds"}
    names, judged = [], []
    for path, config, rows, environment in runs:
        settings = {k: v for k, v in config.reproduction_identity().items() if k != "seeds"}
        differ = sorted(k for k in wanted if wanted[k] != settings.get(k))
        if differ:
            raise ConfigError(f"{LABEL}: {str(path)!r} ran other settings than {str(runs[0][0])!r} ("
                              + "; ".join(f"{k}: {settings.get(k)!r} there, {wanted[k]!r} in the first" for k in differ)
                              + "); only the seeds and the CPU code path may differ")
        judged.append(verdicts(analyse([analysed_row(row, first) for row in rows], config.sgd_batch)))
        names.append(f"{path} ({len(config.seeds)} seeds, {environment.get(CODE_PATH_FIELDS[0]) or '?'})")
    return names, [(key, [run.get(key, "missing") for run in judged]) for key in judged[0]]


def render_verdict_table(names: list[str], rows: list[tuple[str, list[str]]]) -> str:
    """Markdown: a column per run, a row per comparison, whether every run draws the same verdict."""
    lines = ["| comparison | " + " | ".join(names) + " | same in all |", "|---|" + "---|" * (len(names) + 1)]
    agree = 0
    for key, values in rows:
        same = len(set(values)) == 1
        agree += same
        lines.append(f"| {key} | " + " | ".join(values) + f" | {'✓' if same else '✗'} |")
    lines += ["", f"{agree} of {len(rows)} verdicts are the same in all {len(names)} runs."]
    return "\n".join(lines) + "\n"
