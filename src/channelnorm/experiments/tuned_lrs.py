"""Peak learning rates (at the SGD batch of the tuning sweep) chosen by ``channelnorm tune``.

Generated from the committed tuning results (``docs/results/tuning/tuning.json``) by
``tune.render_defaults``; a test checks that this file and those results agree. Never edit by hand.
"""
from __future__ import annotations

TUNED: dict[str, float] = {"channel": 0.4, "group": 0.1, "layer": 0.2, "instance": 0.2, "none": 0.05, "batch_renorm": 0.05, "frn": 0.1, "evonorm_s0": 0.2, "evonorm_b0": 0.1}
TUNED_AT_BATCH = 32
FALLBACK_LR = 0.1   # for a norm the sweep did not cover; the report flags it as untuned


def peak_lr(norm: str, config) -> float:
    """The peak learning rate of ``norm`` at ``config.sgd_batch``: ``config.lrs`` when it names the
    norm, else the tuned value (scaled linearly when the SGD batch differs from the tuning batch),
    else ``FALLBACK_LR``."""
    given = dict(config.lrs)
    if norm in given:
        return given[norm]
    return TUNED.get(norm, FALLBACK_LR) * config.sgd_batch / TUNED_AT_BATCH


def cell_lr(norm: str, sgd_batch: int, config) -> float:
    """The peak learning rate of a cell trained at ``sgd_batch``: ``peak_lr`` scaled linearly from
    ``config.sgd_batch`` (coupled cells train at other SGD batches)."""
    return peak_lr(norm, config) * sgd_batch / config.sgd_batch


def is_tuned(norm: str, config) -> bool:
    return norm in dict(config.lrs) or norm in TUNED
