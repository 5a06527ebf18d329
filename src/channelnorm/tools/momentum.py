"""Converters between PyTorch's ``momentum`` and the ``decay``/``momentum`` of Keras, Flax, TF1, MXNet.

PyTorch weights the NEW batch statistic: ``running ← (1 - m)·running + m·batch``. Keras, Flax, TF1
(``decay``) and MXNet weight the OLD value: ``running ← d·running + (1 - d)·batch``. So ``m = 1 - d``.
"""
from __future__ import annotations

import math
import numbers

__all__ = ["momentum_from_decay", "decay_from_momentum"]


def _unit_interval(name: str, value, hint: str = "") -> float:
    # The range test first: it compares exactly, where math.isfinite(10**400) raises OverflowError.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= value <= 1.0 \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}{hint}")
    return float(value)


def momentum_from_decay(decay: float) -> float:
    """PyTorch ``momentum`` for a Keras/Flax ``momentum`` or TF1 ``decay`` (weight of the old value).

    Args:
        decay: the weight of the old running value, in [0, 1] (Keras' default is 0.99).

    Returns:
        ``1 - decay``, the weight of the new batch statistic, as torch's ``momentum``.
    """
    return 1.0 - _unit_interval("decay", decay)


def decay_from_momentum(momentum: float) -> float:
    """Keras/Flax ``momentum`` / TF1 ``decay`` for a PyTorch ``momentum`` (weight of the new value).

    Args:
        momentum: torch's momentum, in [0, 1]. None (torch's cumulative average) has no fixed
            decay and is a ``ValueError``.

    Returns:
        ``1 - momentum``, the weight of the old running value.
    """
    if momentum is None:
        raise ValueError("momentum=None is PyTorch's cumulative average (m = 1/num_batches_tracked); "
                         "it has no fixed decay")
    return 1.0 - _unit_interval("momentum", momentum)
