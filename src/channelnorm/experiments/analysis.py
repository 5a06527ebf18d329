"""The numbers the report states, computed from ``results.json``/``variants.json`` rows (no prose
here: ``report.py`` renders what this module returns).

``analyse`` returns the pre-registration and the tested claims (``claims.py``: three families,
Welch tests, Holm within each family) and, apart from them and labelled so, the exploratory
numbers: other evaluations, the Group-Norm-faithful cell, the learning-rate grid, the frozen tail,
the shared-learning-rate comparison, censored steps to a target error, coupled cells.
Exploratory comparisons give an effect, its 95 % interval and an unadjusted p-value; they are
leads, not answers.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

from .claims import claim_specs, preregistration, test_claims
from .stats import mean_ci, paired_by_seed, welch

EXPLORATORY = "exploratory"


def label(row: dict[str, Any]) -> str:
    variant = f", {row['variant']}" if row.get("variant") else ""
    return (f"{row['norm']} {row['protocol']} norm-batch {row['norm_batch']} sgd-batch {row['sgd_batch']}"
            f"{variant} ({row['eval']})")


class Rows:
    """Look-up of rows by (norm, protocol, norm batch, SGD batch, eval) and, for variant rows, by
    (learning-rate factor, frozen tail) too."""

    def __init__(self, rows: Sequence[dict[str, Any]], variant_rows: Sequence[dict[str, Any]] = ()) -> None:
        self.rows = list(rows)
        self.index = {(r["norm"], r["protocol"], r["norm_batch"], r["sgd_batch"], r["eval"]): r for r in rows}
        self.variants = {(r["norm"], r["protocol"], r["norm_batch"], r["sgd_batch"], r["eval"], r["lr_scale"],
                          r["frozen_tail"]): r for r in variant_rows}

    def get(self, norm: str, protocol: str, norm_batch: int, sgd_batch: int, evaluation: str = "ema"):
        return self.index.get((norm, protocol, norm_batch, sgd_batch, evaluation))

    def variant(self, norm_batch: int, sgd_batch: int, lr_scale: float = 1.0, frozen_tail: bool = False,
                evaluation: str = "ema"):
        if lr_scale == 1.0 and not frozen_tail:
            return self.get("channel", "decoupled", norm_batch, sgd_batch, evaluation)
        return self.variants.get(("channel", "decoupled", norm_batch, sgd_batch, evaluation, lr_scale, frozen_tail))

    def norm_batches(self, norm: str, protocol: str = "decoupled", sgd_batch: Optional[int] = None) -> list[int]:
        return sorted({r["norm_batch"] for r in self.rows if r["norm"] == norm and r["protocol"] == protocol
                       and (sgd_batch is None or r["sgd_batch"] == sgd_batch)}, reverse=True)

    def decoupled_norms(self) -> list[str]:
        return list(dict.fromkeys(r["norm"] for r in self.rows if r["protocol"] == "decoupled"))


def compare(a: Optional[dict[str, Any]], b: Optional[dict[str, Any]], measure: str = "errors") -> dict[str, Any]:
    """Exploratory: row ``b`` minus row ``a`` on per-seed ``measure`` (``errors`` or ``curve_area``),
    with its 95 % Welch interval and unadjusted p-value, and whether both cells passed the gate."""
    if a is None or b is None:
        return {"a": label(a) if a else None, "b": label(b) if b else None, "delta": None, "ci95": None, "p": None,
                "gated": False, "measured": False}
    va = [v for v in a[measure] if v is not None]
    vb = [v for v in b[measure] if v is not None]
    delta, ci, p = welch(va, vb)
    return {"a": label(a), "b": label(b), "delta": delta, "ci95": None if ci is None else list(ci), "p": p,
            "gated": not (a["converged"] and b["converged"]), "measured": True}


def evaluations(rows: Rows, sgd_batch: int) -> dict[str, list[dict[str, Any]]]:
    """Channel norm's smaller normalization batches against the SGD batch under each evaluation
    (the running-statistics one is the ``batch`` family's claim; these repeat it, exploratory)."""
    out = {}
    for evaluation in ("ema", "precise", "batch"):
        base = rows.get("channel", "decoupled", sgd_batch, sgd_batch, evaluation)
        out[evaluation] = [{**compare(base, rows.get("channel", "decoupled", nb, sgd_batch, evaluation)),
                            "norm_batch": nb}
                           for nb in rows.norm_batches("channel", sgd_batch=sgd_batch) if nb != sgd_batch]
    return out


def precise_recovery(rows: Rows, sgd_batch: int) -> list[dict[str, Any]]:
    """Per smaller normalization batch: the penalty (running statistics) and the points precise
    population statistics recover from it (running minus precise error, paired by seed)."""
    out = []
    for nb in rows.norm_batches("channel", sgd_batch=sgd_batch):
        ema, precise = rows.get("channel", "decoupled", nb, sgd_batch), rows.get("channel", "decoupled", nb, sgd_batch,
                                                                                 "precise")
        ref = rows.get("channel", "decoupled", sgd_batch, sgd_batch)
        if nb == sgd_batch or not (ema and precise and ref):
            continue
        # the same trained models under two evaluations, paired by seed id
        pairs = paired_by_seed(ema["seeds"], ema["errors"], precise["seeds"], precise["errors"])
        recovered, recovered_ci = mean_ci([e - p for e, p in pairs]) if pairs else (None, None)
        out.append({"norm_batch": nb, "penalty": compare(ref, ema), "recovered": recovered,
                    "recovered_ci95": None if recovered_ci is None else list(recovered_ci), "pairs": len(pairs)})
    return out


def scope_ranking(rows: Rows, sgd_batch: int) -> list[dict[str, Any]]:
    """Every norm at the SGD batch (decoupled, running statistics), best first (descriptive)."""
    cells = [r for r in (rows.get(n, "decoupled", sgd_batch, sgd_batch) for n in rows.decoupled_norms()) if r]
    return [{"norm": r["norm"], "mean": r["mean"], "ci95": r["ci95"], "converged": r["converged"],
             "peak_lr": r["peak_lr"]} for r in sorted(cells, key=lambda r: r["mean"])]


def faithful(rows: Rows, config) -> Optional[dict[str, Any]]:
    """The Group-Norm-faithful cell (normalization batch 2 inside SGD batch 16, learning rate scaled
    linearly) against channel norm at the SGD batch and against the same normalization batch inside
    the SGD batch."""
    if config.faithful_cell is None:
        return None
    nb, sb = config.faithful_cell
    cell = rows.get("channel", "decoupled", nb, sb)
    return {"norm_batch": nb, "sgd_batch": sb, "row": None if cell is None else label(cell),
            "vs_reference": compare(rows.get("channel", "decoupled", config.sgd_batch, config.sgd_batch), cell),
            "vs_same_norm_batch": compare(rows.get("channel", "decoupled", nb, config.sgd_batch), cell)
            if nb in config.norm_batches else None}


def lr_grid(rows: Rows, config) -> list[dict[str, Any]]:
    """The small-batch penalty (smallest normalization batch minus the SGD batch) at each learning
    rate of the grid around the tuned one (factor 1 is the main cells)."""
    if not config.lr_factors:
        return []
    small, sb = min(config.norm_batches), config.sgd_batch
    out = []
    for factor in sorted(set(config.lr_factors) | {1.0}):
        big_row, small_row = rows.variant(sb, sb, factor), rows.variant(small, sb, factor)
        out.append({"lr_scale": factor, "peak_lr": None if big_row is None else big_row["peak_lr"],
                    "at_sgd_batch": None if big_row is None else {"mean": big_row["mean"], "ci95": big_row["ci95"]},
                    "at_small_batch": None if small_row is None else {"mean": small_row["mean"],
                                                                      "ci95": small_row["ci95"]},
                    "penalty": compare(big_row, small_row), "norm_batch": small})
    return out


def frozen_tail(rows: Rows, config) -> Optional[dict[str, Any]]:
    """The smallest normalization batch trained with population statistics in its last
    ``frozen_tail`` of the steps, against the same cell without (what the tail recovers) and against
    the SGD batch (what is left)."""
    if config.frozen_tail <= 0:
        return None
    small, sb = min(config.norm_batches), config.sgd_batch
    tail = rows.variant(small, sb, frozen_tail=True)
    return {"norm_batch": small, "share_of_steps": config.frozen_tail,
            "vs_without_tail": compare(rows.variant(small, sb), tail),
            "vs_reference": compare(rows.variant(sb, sb), tail)}


def shared_lr(rows: Rows, config) -> list[dict[str, Any]]:
    """Channel norm at a scaled learning rate against each norm whose tuned rate equals it (the
    same peak learning rate on both sides): test error and area under the error curve."""
    sb = config.sgd_batch
    out = []
    for factor in config.lr_factors:
        channel = rows.variant(sb, sb, factor)
        if channel is None:
            continue
        for norm in rows.decoupled_norms():
            other = rows.get(norm, "decoupled", sb, sb)
            if norm != "channel" and other is not None and abs(other["peak_lr"] - channel["peak_lr"]) < 1e-12:
                out.append({"norm": norm, "peak_lr": channel["peak_lr"], "test_error": compare(channel, other),
                            "curve_area": compare(channel, other, "curve_area")})
    return out


def steps_to_target(rows: Rows, config) -> list[dict[str, Any]]:
    """Steps until the per-batch test error first reached ``target_error``, per norm at the SGD
    batch; a seed that never reached it is censored at the run's length (kept, not dropped): the
    restricted mean counts it as the full run, a lower bound of its true time."""
    sb, out = config.sgd_batch, []
    for norm in rows.decoupled_norms():
        r = rows.get(norm, "decoupled", sb, sb)
        if r is None:
            continue
        censored = [s if s is not None else r["steps"] for s in r["steps_to_target"]]
        m, ci = mean_ci(censored)
        out.append({"norm": norm, "steps_to_target": r["steps_to_target"], "steps": r["steps"],
                    "reached": sum(s is not None for s in r["steps_to_target"]), "seeds": len(r["steps_to_target"]),
                    "restricted_mean": m, "ci95": None if ci is None else list(ci), "peak_lr": r["peak_lr"]})
    return out


def coupled(rows: Rows) -> dict[str, dict[str, Any]]:
    """Coupled cells (SGD batch = normalization batch; ``--full``): smallest against largest batch."""
    out = {}
    for norm in dict.fromkeys(r["norm"] for r in rows.rows if r["protocol"] == "coupled"):
        batches = rows.norm_batches(norm, "coupled")
        if len(batches) >= 2:
            big, small = batches[0], batches[-1]
            out[norm] = compare(rows.get(norm, "coupled", big, big), rows.get(norm, "coupled", small, small))
    return out


def analyse(rows_list: Sequence[dict[str, Any]], config, variant_rows: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Everything the report states, as plain data (``results.json``-style rows in)."""
    rows = Rows(rows_list, variant_rows)
    specs = claim_specs(config.norms, config.norm_batches, config.sgd_batch)
    sb = config.sgd_batch
    return {
        "preregistered": preregistration(config),
        "claims": test_claims(specs, rows.index, config.alpha),
        EXPLORATORY: {
            "evaluations": evaluations(rows, sb),
            "precise_recovery": precise_recovery(rows, sb),
            "scope_ranking": scope_ranking(rows, sb),
            "faithful": faithful(rows, config),
            "lr_grid": lr_grid(rows, config),
            "frozen_tail": frozen_tail(rows, config),
            "shared_lr": shared_lr(rows, config),
            "steps_to_target": steps_to_target(rows, config),
            "coupled": coupled(rows),
        },
        "gated_cells": sorted({label(r).rsplit(" (", 1)[0] for r in list(rows_list) + list(variant_rows)
                               if not r["converged"]}),
    }


def verdicts(analysis: dict[str, Any]) -> dict[str, str]:
    """The pre-registered claims' verdicts, keyed by claim id."""
    return {c["id"]: c["verdict"] for c in analysis["claims"]}
