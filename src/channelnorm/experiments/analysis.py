"""The numbers and verdicts the report states, computed from ``results.json`` rows (no prose here:
``report.py`` renders what this module returns).

Rules: a difference is claimed only when its 95 % Welch t interval excludes zero; a comparison
that involves a cell where some seed did not converge (final training loss above the threshold)
or diverged draws no conclusion ("not converged").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from .stats import diff_ci, excludes_zero, mean_ci, paired_by_seed

WORSE, BETTER, NO_DIFFERENCE, NOT_CONVERGED, NOT_MEASURED = (
    "worse", "better", "no difference detected", "no conclusion: not converged", "not measured")


@dataclass(frozen=True)
class Comparison:
    """``b`` minus ``a`` (test error, points) with its 95 % interval and the verdict for b vs a."""
    a: str
    b: str
    delta: Optional[float]
    ci95: Optional[tuple[float, float]]
    verdict: str

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "delta": self.delta, "ci95": None if self.ci95 is None else list(self.ci95),
                "verdict": self.verdict}


def label(row: dict[str, Any]) -> str:
    return f"{row['norm']} {row['protocol']} norm-batch {row['norm_batch']} sgd-batch {row['sgd_batch']} ({row['eval']})"


def compare(a: Optional[dict[str, Any]], b: Optional[dict[str, Any]]) -> Comparison:
    """Verdict on row ``b`` against row ``a`` (higher error is worse)."""
    if a is None or b is None:
        return Comparison(label(a) if a else "?", label(b) if b else "?", None, None, NOT_MEASURED)
    delta, ci = diff_ci(a["errors"], b["errors"])
    if not (a["converged"] and b["converged"]):
        verdict = NOT_CONVERGED
    elif not excludes_zero(ci):
        verdict = NO_DIFFERENCE
    else:
        verdict = WORSE if delta > 0 else BETTER
    return Comparison(label(a), label(b), delta, ci, verdict)


class Rows:
    """Look-up of results rows by (norm, protocol, norm batch, SGD batch, eval)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.index = {(r["norm"], r["protocol"], r["norm_batch"], r["sgd_batch"], r["eval"]): r for r in rows}

    def get(self, norm: str, protocol: str, norm_batch: int, sgd_batch: int, evaluation: str = "ema"):
        return self.index.get((norm, protocol, norm_batch, sgd_batch, evaluation))

    def norm_batches(self, norm: str, protocol: str = "decoupled") -> list[int]:
        return sorted({r["norm_batch"] for r in self.rows if r["norm"] == norm and r["protocol"] == protocol},
                      reverse=True)

    def decoupled_norms(self) -> list[str]:
        return list(dict.fromkeys(r["norm"] for r in self.rows if r["protocol"] == "decoupled"))


def robustness(rows: Rows, sgd_batch: int, norm: str = "channel") -> dict[str, list[Comparison]]:
    """Decoupled: each smaller normalization batch against the SGD batch, per evaluation."""
    out = {}
    for evaluation in ("ema", "precise", "batch"):
        base = rows.get(norm, "decoupled", sgd_batch, sgd_batch, evaluation)
        out[evaluation] = [compare(base, rows.get(norm, "decoupled", nb, sgd_batch, evaluation))
                           for nb in rows.norm_batches(norm) if nb != sgd_batch]
    return out


def coupled(rows: Rows) -> dict[str, Comparison]:
    """Coupled (SGD batch = normalization batch): smallest against largest batch, per norm (EMA)."""
    out = {}
    for norm in dict.fromkeys(r["norm"] for r in rows.rows if r["protocol"] == "coupled"):
        batches = rows.norm_batches(norm, "coupled")
        if len(batches) >= 2:
            big, small = batches[0], batches[-1]
            out[norm] = compare(rows.get(norm, "coupled", big, big), rows.get(norm, "coupled", small, small))
    return out


def replication_status(coupled_comparisons: dict[str, Comparison]) -> str:
    """'flat' when group norm's coupled change is within noise (the protocol is not confounded),
    'confounded' when it is not, 'not converged' / 'not measured' otherwise."""
    group = coupled_comparisons.get("group")
    if group is None or group.verdict == NOT_MEASURED:
        return "not measured"
    if group.verdict == NOT_CONVERGED:
        return "not converged"
    return "flat" if group.verdict == NO_DIFFERENCE else "confounded"


def precise_recovery(rows: Rows, sgd_batch: int, norm: str = "channel", protocol: str = "decoupled") -> list[dict]:
    """Per small normalization batch: the small-batch penalty (EMA error minus the EMA error at the
    reference batch), the points precise statistics recover (EMA minus precise at the small batch,
    with its interval), and their ratio (a point estimate; meaningful only when the penalty's
    interval excludes zero)."""
    out = []
    for nb in rows.norm_batches(norm, protocol):
        ref_batch = sgd_batch if protocol == "decoupled" else max(rows.norm_batches(norm, protocol))
        if nb == ref_batch:
            continue
        sb = sgd_batch if protocol == "decoupled" else nb
        ema = rows.get(norm, protocol, nb, sb, "ema")
        precise = rows.get(norm, protocol, nb, sb, "precise")
        ref = rows.get(norm, protocol, ref_batch, ref_batch if protocol == "coupled" else sgd_batch, "ema")
        if not (ema and precise and ref):
            continue
        penalty, penalty_ci = diff_ci(ref["errors"], ema["errors"])
        # paired by seed: the same trained models under two evaluations
        pairs = paired_by_seed(ema["seeds"], ema["errors"], precise["seeds"], precise["errors"])
        recovered, recovered_ci = mean_ci([e - p for e, p in pairs])
        out.append({"norm_batch": nb, "protocol": protocol, "penalty": penalty,
                    "penalty_ci95": None if penalty_ci is None else list(penalty_ci),
                    "recovered": recovered, "recovered_ci95": None if recovered_ci is None else list(recovered_ci),
                    "share": recovered / penalty if excludes_zero(penalty_ci) and penalty > 0 else None,
                    "converged": ema["converged"] and ref["converged"]})
    return out


def scope_ranking(rows: Rows, sgd_batch: int) -> list[dict[str, Any]]:
    """Every norm at the SGD batch (decoupled, EMA), best first, each compared with the best."""
    cells = [r for r in (rows.get(n, "decoupled", sgd_batch, sgd_batch) for n in rows.decoupled_norms()) if r]
    cells.sort(key=lambda r: r["mean"])
    ranked = []
    best = next((r for r in cells if r["converged"]), cells[0] if cells else None)
    for r in cells:
        entry = {"norm": r["norm"], "mean": r["mean"], "ci95": r["ci95"], "converged": r["converged"],
                 "peak_lr": r["peak_lr"], "vs_best": None}
        if best is not None and r is not best:
            entry["vs_best"] = compare(best, r).to_dict()
        ranked.append(entry)
    return ranked


def convergence_speed(rows: Rows, sgd_batch: int) -> list[dict[str, Any]]:
    """Steps until the test error first reached the target, per norm at the SGD batch: the per-seed
    values (None: never within the run) and their mean and interval over the seeds that reached it."""
    out = []
    for norm in rows.decoupled_norms():
        r = rows.get(norm, "decoupled", sgd_batch, sgd_batch)
        if r is None:
            continue
        reached = [s for s in r["steps_to_target"] if s is not None]
        m, ci = mean_ci(reached) if reached else (None, None)
        out.append({"norm": norm, "steps_to_target": r["steps_to_target"], "reached": len(reached),
                    "seeds": len(r["steps_to_target"]), "mean": m, "ci95": None if ci is None else list(ci),
                    "peak_lr": r["peak_lr"], "steps": r["steps"]})
    return out


def convergence_comparisons(speed: list[dict[str, Any]], reference: str = "channel") -> list[dict[str, Any]]:
    """Steps to the target error: every other norm minus ``reference`` (positive: the reference was
    faster), Welch interval over the seeds that reached the target; 'not reached' when a seed of
    either norm never reached it within the run."""
    ref = next((c for c in speed if c["norm"] == reference), None)
    out = []
    if ref is None:
        return out
    for c in speed:
        if c["norm"] == reference:
            continue
        if ref["reached"] < ref["seeds"] or c["reached"] < c["seeds"]:
            out.append({"norm": c["norm"], "delta": None, "ci95": None, "verdict": "not reached by every seed"})
            continue
        delta, ci = diff_ci([s for s in ref["steps_to_target"]], [s for s in c["steps_to_target"]])
        verdict = NO_DIFFERENCE if not excludes_zero(ci) else (f"{reference} faster" if delta > 0
                                                               else f"{reference} slower")
        out.append({"norm": c["norm"], "delta": delta, "ci95": None if ci is None else list(ci), "verdict": verdict})
    return out


def analyse(rows_list: list[dict[str, Any]], sgd_batch: int) -> dict[str, Any]:
    """Everything the report states, as plain data (``results.json``-style rows in)."""
    rows = Rows(rows_list)
    coupled_comparisons = coupled(rows)
    speed = convergence_speed(rows, sgd_batch)
    return {
        "robustness": {e: [{**c.to_dict(), "norm_batch": nb} for c, nb in
                           zip(cs, [b for b in rows.norm_batches("channel") if b != sgd_batch])]
                       for e, cs in robustness(rows, sgd_batch).items()},
        "coupled": {n: c.to_dict() for n, c in coupled_comparisons.items()},
        "replication": replication_status(coupled_comparisons),
        "precise_recovery": precise_recovery(rows, sgd_batch) + precise_recovery(rows, sgd_batch, protocol="coupled"),
        "scope_ranking": scope_ranking(rows, sgd_batch),
        "convergence_speed": speed,
        "convergence_vs_channel": convergence_comparisons(speed),
        "not_converged": sorted({label(r).rsplit(" (", 1)[0] for r in rows_list if not r["converged"]}),
    }


def verdicts(analysis: dict[str, Any]) -> dict[str, str]:
    """The verdicts only, keyed by what they compare (to check that a rerun draws the same ones)."""
    out = {}
    for evaluation, comparisons in analysis["robustness"].items():
        for c in comparisons:
            out[f"robustness {evaluation}: {c['b']} vs {c['a']}"] = c["verdict"]
    for norm, c in analysis["coupled"].items():
        out[f"coupled {norm}: {c['b']} vs {c['a']}"] = c["verdict"]
    out["coupled replication"] = analysis["replication"]
    for c in analysis["convergence_vs_channel"]:
        out[f"steps to target: {c['norm']} vs channel"] = c["verdict"]
    for entry in analysis["scope_ranking"]:
        if entry["vs_best"] is not None:
            out[f"scope: {entry['norm']} vs best"] = entry["vs_best"]["verdict"]
    return out


def reproduction(here_rows: list[dict[str, Any]], there_rows: list[dict[str, Any]], sgd_batch: int) -> dict[str, Any]:
    """Do the verdicts of two runs of the same grid agree? Also how far the cells moved: the largest
    change of a cell mean, how many cells came out identical seed by seed, and per cell the two
    means (running-statistics evaluation) for the report."""
    here, there = verdicts(analyse(here_rows, sgd_batch)), verdicts(analyse(there_rows, sgd_batch))
    differ = [(k, here[k], there.get(k, "missing")) for k in here if here[k] != there.get(k, "missing")]
    key = ("norm", "protocol", "norm_batch", "sgd_batch", "eval")
    other = {tuple(r[k] for k in key): r for r in there_rows}
    pairs = [(r, other[tuple(r[k] for k in key)]) for r in here_rows if tuple(r[k] for k in key) in other]
    cells = [{"norm": a["norm"], "protocol": a["protocol"], "norm_batch": a["norm_batch"], "sgd_batch": a["sgd_batch"],
              "here": a["mean"], "there": b["mean"]} for a, b in pairs if a["eval"] == "ema"]
    return {"total": len(here), "differ": differ,
            "verdicts": [(k, here[k], there.get(k, "missing")) for k in here],
            "max_mean_change": max((abs(a["mean"] - b["mean"]) for a, b in pairs), default=0.0),
            "rows_compared": len(pairs), "rows_missing": len(here_rows) - len(pairs),
            "rows_identical": sum(dict(zip(a["seeds"], a["errors"])) == dict(zip(b["seeds"], b["errors"]))
                                  for a, b in pairs), "cells": cells}
