"""What a run's record concludes under the analysis thresholds, derived from what it measured.

``converged`` (the final training loss below ``converged_loss``, without divergence) and
``steps_to_target`` (the first logged step whose test error is at most ``target_error``) depend on
the thresholds, not on the training, and ``curve_area`` is derived from the curve (never read back
from a file): a run directory trained under other thresholds is re-analysed
with the current ones (``analysed``) instead of retrained.
"""
from __future__ import annotations

from typing import Any, Optional

from .config import ExperimentConfig
from .stats import is_finite_number


def converged(final_train_loss: Optional[float], diverged: bool, converged_loss: float) -> bool:
    """The run converged: it did not diverge and its final training loss is below ``converged_loss``."""
    return not diverged and final_train_loss is not None and final_train_loss < converged_loss


def steps_to_target(curve: list[tuple[int, float]], target: float) -> Optional[int]:
    """The first logged step whose error is at most ``target`` (None when none is)."""
    return next((step for step, error in curve if error <= target), None)


def curve_area(curve: list) -> Optional[float]:
    """The area under the error curve per unit of training: the mean test error (%) over the curve's
    points, which are evenly spaced in steps (None for a run with no point: it diverged at once).
    Lower is faster *and* better; unlike a time to a target, it needs no target and no run is
    dropped for never reaching one."""
    return sum(error for _, error in curve) / len(curve) if curve else None


def analysed(record: dict[str, Any], config: ExperimentConfig) -> dict[str, Any]:
    """``record`` with ``converged`` and ``steps_to_target`` under ``config``'s thresholds."""
    return {**record,
            "converged": converged(record["final_train_loss"], record["diverged"], config.converged_loss),
            "steps_to_target": steps_to_target(record["curve"], config.target_error)}


def analysed_row(row: dict[str, Any], config: ExperimentConfig) -> dict[str, Any]:
    """A ``results.json`` row with ``converged`` and ``steps_to_target`` under ``config``'s thresholds,
    from its per-seed final losses, divergence count and curves (every seed converged, as a row is built)."""
    return {**row,
            "converged": row["diverged"] == 0 and all(converged(loss, False, config.converged_loss)
                                                      for loss in row["final_train_loss"]),
            "steps_to_target": [steps_to_target(curve, config.target_error) for curve in row["curve"]],
            "curve_area": [curve_area(curve) for curve in row["curve"]]}


def row_outcome_problem(row: dict[str, Any], seeds: int) -> Optional[str]:
    """What keeps ``analysed_row`` from reading ``row`` (one final loss and one curve per seed, a
    divergence count), or None."""
    losses, diverged, curves = row.get("final_train_loss"), row.get("diverged"), row.get("curve")
    if not (isinstance(losses, list) and len(losses) == seeds and all(
            loss is None or (is_finite_number(loss) and loss >= 0) for loss in losses)):
        return f"final_train_loss must be a list of {seeds} non-negative numbers or nulls, got {str(losses)[:80]}"
    if not (isinstance(diverged, int) and not isinstance(diverged, bool) and 0 <= diverged <= seeds):
        return f"diverged must be a count of seeds from 0 to {seeds}, got {diverged!r}"
    if not (isinstance(curves, list) and len(curves) == seeds and all(
            isinstance(curve, list) and all(is_curve_point(p) for p in curve) for curve in curves)):
        return (f"curve must be {seeds} lists of [step, error] pairs (a whole step >= 0, an error in [0, 100] %), "
                f"got {str(curves)[:80]}")
    return None


def is_curve_point(point: Any) -> bool:
    """``[step, error]`` as a run measures it (records and results rows alike): the step a whole
    number >= 0 that a float holds (the analysis averages steps), the test error a percentage. A NaN,
    negative or fractional step, or an error outside [0, 100], would pass for a target reached or missed."""
    if not (isinstance(point, (list, tuple)) and len(point) == 2):
        return False
    step, error = point
    return (isinstance(step, int) and not isinstance(step, bool) and is_finite_number(step) and step >= 0
            and is_finite_number(error) and 0 <= error <= 100)
