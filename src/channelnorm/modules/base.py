"""``_NormBase``: parameters, buffers, running-statistics bookkeeping and repr for every norm.

Buffer and parameter names, dtypes and ``state_dict`` keys are those of ``torch.nn.BatchNorm*d``
(``weight``, ``bias``, ``running_mean``, ``running_var``, ``num_batches_tracked``), so state dicts
load strictly in both directions.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

from ..functional import _validation as _checks
from ..ops import dispatch


class _NormBase(nn.Module):
    _version = 2
    # Constructor arguments shown by extra_repr, in order; subclasses extend or trim this.
    _repr_fields: tuple[str, ...] = ("num_channels", "eps", "momentum", "affine", "track_running_stats",
                                     "channel_axis", "backend")
    _repr_positional = 1  # leading fields shown without a name, as torch shows num_features

    def __init__(
        self,
        num_channels: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        channel_axis: int = 1,
        backend: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.num_channels = _checks.positive_int("num_channels", num_channels)
        self.eps = _checks.eps(eps)
        self.momentum = _checks.momentum(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats)
        self.channel_axis = _checks.channel_axis_arg(channel_axis)
        dispatch.check_backend_name(backend)
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        if self.affine:
            self.weight = nn.Parameter(torch.empty(self.num_channels, **factory))
            self.bias = nn.Parameter(torch.empty(self.num_channels, **factory))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(self.num_channels, **factory))
            self.register_buffer("running_var", torch.ones(self.num_channels, **factory))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    @property
    def num_features(self) -> int:
        """``nn.BatchNorm``'s name for ``num_channels`` (for code written against torch's norms)."""
        return self.num_channels

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    def _check_input(self, input) -> None:
        _checks.channel_count(type(self).__name__, input, self.channel_axis, self.num_channels)

    def _uses_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def _running_buffers(self):
        """Buffers handed to the functional op: updated in training, read in eval (as nn.BatchNorm)."""
        if self.track_running_stats:
            return self.running_mean, self.running_var, self.num_batches_tracked
        return None, None, None

    def extra_repr(self) -> str:
        shown = []
        for i, name in enumerate(self._repr_fields):
            value = getattr(self, name)
            shown.append(repr(value) if i < self._repr_positional else f"{name}={value!r}")
        return ", ".join(shown)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata, strict: bool,
                              missing_keys, unexpected_keys, error_msgs) -> None:
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        # As nn.BatchNorm: state dicts from before num_batches_tracked existed load with 0.
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long,
                                           device=self.num_batches_tracked.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
