"""Several finished runs of one grid pooled (``channelnorm verdicts DIR DIR ...``).

The runs may differ in their seeds and their CPU code path, nothing else that decides what they
train. Their per-seed values are pooled cell by cell and the pre-registered claims are tested once
on the pool (Welch, Holm within each family): more seeds, one test, instead of counting how often
several underpowered tests agree. A seed that two runs share (the same initialization and data
order, only the rounding differs) is not independent: it is counted once, from the first run that
has it, and the table says which were left out. Each later run is also set against the first by
interval agreement (does each run's effect lie inside the other's 95 % interval?).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .analysis import analyse
from .claims import claim_specs, interval_agreement, test_claims
from .config import ConfigError
from .environment import CODE_PATH_FIELDS
from .outcome import analysed_row
from .results import read_finished_run
from .stats import mean_ci

LABEL = "channelnorm verdicts"
POOLED = ("errors", "curve_area", "final_train_loss", "steps_to_target")


def pool_rows(runs: Sequence[list[dict[str, Any]]]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of several runs merged cell by cell, each seed once (the first run's value where
    runs share a seed), and a line per seed left out as a duplicate."""
    pooled: dict[tuple, dict[str, Any]] = {}
    duplicates = []
    for index, rows in enumerate(runs):
        for row in rows:
            key = (row["norm"], row["protocol"], row["norm_batch"], row["sgd_batch"], row["eval"])
            target = pooled.setdefault(key, {**row, "seeds": [], **{name: [] for name in POOLED},
                                             "converged": True})
            for j, seed in enumerate(row["seeds"]):
                if seed in target["seeds"]:
                    duplicates.append(f"run {index + 1}: seed {seed} of {key} (already in an earlier run)")
                    continue
                target["seeds"].append(seed)
                for name in POOLED:
                    target[name].append(row[name][j])
            target["converged"] = target["converged"] and row["converged"]
    for row in pooled.values():
        row["mean"], ci = mean_ci(row["errors"])
        row["ci95"] = None if ci is None else list(ci)
    return list(pooled.values()), duplicates


def pooled_claims(paths: Sequence[Path]) -> dict[str, Any]:
    """Each run's claims, the claims of the pool, and each later run's interval agreement with
    the first. A ConfigError naming the folder for a run that is not a finished compare run, or
    whose settings differ from the first's in more than seeds."""
    if len(paths) < 2:
        raise ConfigError(f"{LABEL}: give at least two run directories, got {len(paths)}")
    runs = [(Path(path), *read_finished_run(Path(path), LABEL)) for path in paths]
    first = runs[0][1]
    wanted = {k: v for k, v in first.reproduction_identity().items() if k != "seeds"}
    names, per_run, row_sets = [], [], []
    for path, config, rows, environment in runs:
        settings = {k: v for k, v in config.reproduction_identity().items() if k != "seeds"}
        differ = sorted(k for k in wanted if wanted[k] != settings.get(k))
        if differ:
            raise ConfigError(f"{LABEL}: {str(path)!r} ran other settings than {str(runs[0][0])!r} ("
                              + "; ".join(f"{k}: {settings.get(k)!r} there, {wanted[k]!r} in the first" for k in differ)
                              + "); only the seeds and the CPU code path may differ")
        judged = [analysed_row(row, first) for row in rows]
        row_sets.append(judged)
        per_run.append(analyse(judged, first)["claims"])
        names.append(f"{path} (seeds {min(config.seeds)}–{max(config.seeds)}, "
                     f"{environment.get(CODE_PATH_FIELDS[0]) or '?'})")
    pooled, duplicates = pool_rows(row_sets)
    index = {(r["norm"], r["protocol"], r["norm_batch"], r["sgd_batch"], r["eval"]): r for r in pooled}
    claims = test_claims(claim_specs(first.norms, first.norm_batches, first.sgd_batch), index, first.alpha)
    return {"runs": names, "per_run": per_run, "pooled": claims, "duplicates": duplicates,
            "agreement": [interval_agreement(per_run[0], other) for other in per_run[1:]]}


def _effect(claim: dict[str, Any]) -> str:
    if claim["delta"] is None or claim["ci95"] is None:
        return claim["verdict"]
    return f"{claim['delta']:+.2f} [{claim['ci95'][0]:.2f}, {claim['ci95'][1]:.2f}]"


def render_pooled(result: dict[str, Any]) -> str:
    """Markdown: per claim, each run's effect, the pooled effect with its Holm-adjusted p-value and
    verdict, and whether each later run's interval agrees with the first's."""
    names = result["runs"]
    header = (["claim"] + [f"run {i + 1}" for i in range(len(names))]
              + ["pooled", "p (Holm)", "pooled verdict"] + [f"run {i + 2} ~ run 1" for i in range(len(names) - 1)])
    lines = ["Runs: " + "; ".join(f"run {i + 1} = `{n}`" for i, n in enumerate(names)), "",
             "Effects are b − a in points of test error (convergence: of the mean error over the curve), "
             "95 % Welch intervals; `~` means each run's effect lies inside the other's interval.", "",
             "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for i, claim in enumerate(result["pooled"]):
        cells = [claim["id"]] + [_effect(run[i]) for run in result["per_run"]]
        p = "—" if claim["p_holm"] is None else f"{claim['p_holm']:.3g}"
        cells += [_effect(claim) + f" (n={claim['n_a']}/{claim['n_b']})", p,
                  claim["verdict"] + (" ⚠ gated" if claim["gated"] else "")]
        cells += ["—" if a[i]["agrees"] is None else ("✓" if a[i]["agrees"] else "✗") for a in result["agreement"]]
        lines.append("| " + " | ".join(cells) + " |")
    if result["duplicates"]:
        lines += ["", f"{len(result['duplicates'])} per-seed values left out because an earlier run has the same "
                  "seed (not independent):", ""] + [f"- {d}" for d in result["duplicates"][:40]]
        if len(result["duplicates"]) > 40:
            lines.append(f"- … and {len(result['duplicates']) - 40} more")
    return "\n".join(lines) + "\n"
