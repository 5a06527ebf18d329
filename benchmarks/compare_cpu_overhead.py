"""Markdown table of ``bench_cpu_overhead.py`` ratios before and after a change.

Each side may hold several JSON files (runs alternated before/after on a shared machine); per row
the median over runs of each run's statistic is shown, so one loaded run does not decide a row.

    python benchmarks/compare_cpu_overhead.py --before a1.json a2.json --after b1.json b2.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def load(paths: list[Path]) -> tuple[dict, list[dict]]:
    """Rows keyed by (norm, mode, shape) -> list of rows over runs; plus each run's environment."""
    rows: dict = {}
    envs = []
    for path in paths:
        data = json.loads(path.read_text())
        envs.append({"file": path.name, "started_utc": data["started_utc"], **data["environment"]})
        for row in data["rows"]:
            rows.setdefault((row["norm"], row["mode"], tuple(row["shape"])), []).append(row)
    return rows, envs


def median_of(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def table(before: dict, after: dict) -> str:
    lines = ["| norm | mode | shape | before: median ratio | after: median ratio | after: best ratio "
             "| after µs (ours / torch, median) |",
             "|---|---|---|---:|---:|---:|---:|"]
    for key in after:
        norm, mode, shape = key
        b, a = before.get(key), after[key]
        lines.append(f"| {norm} | {mode} | {','.join(map(str, shape))} "
                     f"| {median_of(b, 'ratio_median_of_rounds') if b else float('nan'):.2f} "
                     f"| {median_of(a, 'ratio_median_of_rounds'):.2f} | {median_of(a, 'ratio_best'):.2f} "
                     f"| {median_of(a, 'ours_us_median'):.1f} / {median_of(a, 'torch_us_median'):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, nargs="+", required=True)
    parser.add_argument("--after", type=Path, nargs="+", required=True)
    args = parser.parse_args()
    before, before_envs = load(args.before)
    after, after_envs = load(args.after)
    print(table(before, after))
    print()
    for side, envs in (("before", before_envs), ("after", after_envs)):
        for env in envs:
            print(f"- {side}: `{env['file']}` {env['started_utc']}, git {(env['git_hash'] or '?')[:7]}, load "
                  f"{env['load_average_before']} -> {env['load_average_after']}")


if __name__ == "__main__":
    main()
