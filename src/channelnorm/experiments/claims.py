"""The claims fixed before a run and their tests: the experiment's pre-registration.

Three families of comparisons, each against channel norm at the SGD batch (decoupled, running
statistics, the way a model is deployed), written into ``analysis.json["preregistered"]`` before
any number of the run is read:

* ``scope``: every other norm at the SGD batch (instance, group, layer, layernorm2d, none, ...);
* ``batch``: channel norm at each smaller normalization batch (ghost batches inside the same SGD batch);
* ``convergence``: every other norm, measured by the area under its test-error curve (the mean
  error over ``curve_points`` evenly spaced steps, read with per-batch statistics): a run that
  never reaches a target is not dropped, because there is no target.

Each comparison is Welch's two-sided t test (``scipy.stats.ttest_ind(equal_var=False)``) of the
per-seed values of the two cells, with the 95 % Welch interval of ``mean(b) - mean(a)``; p-values
are adjusted with Holm's step-down method within each family, and a claim's verdict is a
difference only when its adjusted p-value is below ``alpha``. A cell with a seed whose final
training loss is not below ``converged_loss`` flags the claim (``gated``): its effect and verdict
are still reported. Everything else the report computes is exploratory and labelled so.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Optional, Sequence

from .stats import holm, welch

FAMILIES = ("scope", "batch", "convergence")
MEASURES = {"test_error": "test error (%), running (EMA) statistics",
            "curve_area": "mean test error (%) over the error curve's points, per-batch statistics"}
WORSE, BETTER, SLOWER, FASTER, NO_DIFFERENCE, NOT_MEASURED = (
    "worse", "better", "slower", "faster", "no difference detected", "not measured")

CellKey = tuple[str, str, int, int]   # (norm, protocol, normalization batch, SGD batch)


@dataclass(frozen=True)
class ClaimSpec:
    """One pre-registered comparison: ``b`` minus ``a`` on ``measure``."""
    id: str
    family: str
    a: CellKey
    b: CellKey
    measure: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "a": list(self.a), "b": list(self.b)}


def claim_specs(norms: Sequence[str], norm_batches: Sequence[int], sgd_batch: int) -> list[ClaimSpec]:
    """The claims of a grid (none without channel norm, the reference of every family)."""
    if "channel" not in norms:
        return []
    ref: CellKey = ("channel", "decoupled", sgd_batch, sgd_batch)
    others = [n for n in norms if n != "channel"]
    specs = [ClaimSpec(f"scope:{n}", "scope", ref, (n, "decoupled", sgd_batch, sgd_batch), "test_error")
             for n in others]
    specs += [ClaimSpec(f"batch:{nb}", "batch", ref, ("channel", "decoupled", nb, sgd_batch), "test_error")
              for nb in sorted(norm_batches) if nb != sgd_batch]
    specs += [ClaimSpec(f"convergence:{n}", "convergence", ref, (n, "decoupled", sgd_batch, sgd_batch), "curve_area")
              for n in others]
    return specs


def preregistration(config) -> dict[str, Any]:
    """What is fixed before the run: the claims, the test, the correction and every threshold."""
    return {
        "protocol": "v3",
        "families": list(FAMILIES),
        "test": "Welch's two-sided t test on per-seed values (scipy.stats.ttest_ind, equal_var=False); "
                "95 % Welch interval of mean(b) - mean(a)",
        "correction": "Holm within each family",
        "alpha": config.alpha,
        "measures": MEASURES,
        "curve": {"points": config.curve_points, "images": config.curve_size,
                  "statistics": "per-batch statistics of the cell's normalization batch (batch-statistic norms); "
                                "eval mode for per-sample norms"},
        "gate": {"converged_loss": config.converged_loss,
                 "rule": "a claim whose cells have a seed with final training loss not below converged_loss is "
                         "flagged (gated); its effect and verdict are still reported"},
        "target_error": {"value": config.target_error, "use": "exploratory: censored steps to this error"},
        "claims": [s.to_dict() for s in claim_specs(config.norms, config.norm_batches, config.sgd_batch)],
        "exploratory": "every other number of the report (other evaluations, the Group-Norm-faithful cell, "
                       "the learning-rate grid, the frozen tail, coupled cells, steps to target, mechanism)",
    }


def _values(row: dict[str, Any], measure: str) -> list[Optional[float]]:
    return list(row["errors"]) if measure == "test_error" else list(row["curve_area"])


def _verdict(spec: ClaimSpec, delta: float, p_holm: Optional[float], alpha: float) -> str:
    if p_holm is None:
        return NOT_MEASURED
    if p_holm >= alpha:
        return NO_DIFFERENCE
    if spec.measure == "curve_area":
        return SLOWER if delta > 0 else FASTER
    return WORSE if delta > 0 else BETTER


def test_claims(specs: Sequence[ClaimSpec], rows: dict[tuple, dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """Each claim tested on ``rows`` ({(norm, protocol, nb, sgd, eval): row}, running-statistics rows
    used), Holm-adjusted within its family."""
    claims = []
    for spec in specs:
        a, b = rows.get((*spec.a, "ema")), rows.get((*spec.b, "ema"))
        entry: dict[str, Any] = {"id": spec.id, "family": spec.family, "a": list(spec.a), "b": list(spec.b),
                                 "measure": spec.measure, "delta": None, "ci95": None, "p": None, "p_holm": None,
                                 "verdict": NOT_MEASURED, "seeds": [], "n_a": 0, "n_b": 0, "gated": False,
                                 "dropped_seeds": []}
        if a is not None and b is not None:
            va, vb = _values(a, spec.measure), _values(b, spec.measure)
            # a run with no curve point (diverged at once) has no area: dropped from the test, and said so
            dropped = [s for s, v in zip(a["seeds"], va) if v is None] + [s for s, v in zip(b["seeds"], vb) if v is None]
            va, vb = [v for v in va if v is not None], [v for v in vb if v is not None]
            delta, ci, p = welch(va, vb)
            entry.update(delta=None if math.isnan(delta) else delta, ci95=None if ci is None else list(ci), p=p,
                         seeds=sorted(set(a["seeds"]) | set(b["seeds"])), n_a=len(va), n_b=len(vb),
                         gated=not (a["converged"] and b["converged"]), dropped_seeds=sorted(set(dropped)))
        claims.append(entry)
    for family in FAMILIES:
        members = [c for c in claims if c["family"] == family]
        for claim, adjusted in zip(members, holm([c["p"] for c in members])):
            claim["p_holm"] = adjusted
    for claim, spec in zip(claims, specs):
        claim["verdict"] = _verdict(spec, claim["delta"] or 0.0, claim["p_holm"], alpha)
    return claims


def interval_agreement(here: list[dict[str, Any]], there: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each claim of two runs (another CPU code path, other seeds): does each run's effect lie
    inside the other's 95 % interval? That, not equal verdicts of two underpowered tests, is what
    a reproduction is judged by."""
    other = {c["id"]: c for c in there}
    out = []
    for c in here:
        d = other.get(c["id"])
        if d is None or c["delta"] is None or d["delta"] is None or c["ci95"] is None or d["ci95"] is None:
            out.append({"id": c["id"], "here": c["delta"], "there": None if d is None else d["delta"],
                        "agrees": None})
            continue
        inside_there = d["ci95"][0] <= c["delta"] <= d["ci95"][1]
        inside_here = c["ci95"][0] <= d["delta"] <= c["ci95"][1]
        out.append({"id": c["id"], "here": c["delta"], "here_ci95": c["ci95"], "there": d["delta"],
                    "there_ci95": d["ci95"], "here_inside_there": inside_there, "there_inside_here": inside_here,
                    "agrees": inside_there and inside_here})
    return out
