"""BatchRenorm: ChannelNorm whose training output is corrected towards the running statistics (Ioffe 2017)."""
from __future__ import annotations

from typing import Optional

import torch

from ..functional.core import require_backend
from ..functional.robust import batch_renorm_validated
from .channel import ChannelNorm


class BatchRenorm(ChannelNorm):
    """Batch Renormalization: ``y = ((x - μ_B)/σ_B · r + d)·γ + β`` in training.

    ``r = clip(σ_B/σ, 1/rmax_t, rmax_t)`` and ``d = clip((μ_B - μ)/σ, -dmax_t, dmax_t)`` carry no
    gradient; ``μ``, ``σ = sqrt(running_var + eps)`` are the running statistics before this batch.
    Warm-up (step ``t = num_batches_tracked``): ``f = min(t / warmup_steps, 1)`` (1 when
    ``warmup_steps=0``), ``rmax_t = 1 + (rmax - 1)·f``, ``dmax_t = dmax·f`` — a linear ramp from
    plain ChannelNorm at step 0 to the targets at ``warmup_steps``. Running statistics, buffers,
    ``state_dict`` and eval are exactly ChannelNorm's. Training runs on the reference math only
    (``backend`` "auto" or "reference").

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        momentum: weight of the new batch statistic in the running statistics, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``). Default: 0.1.
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        track_running_stats: must be True (r and d compare the batch with the running statistics);
            False is a ``ValueError``. Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end.
            Default: 1.
        backend: ``"auto"`` or ``"reference"`` (the only implementation of the training path);
            ``"native"``/``"triton"`` are a ``ValueError``. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters and buffers. Default: None (torch's
            default device).
        dtype (torch.dtype | None): floating dtype of the parameters and buffers. Default: None (torch's
            default dtype).
        rmax: keyword-only; the final bound of ``r``, >= 1 (1 with ``dmax=0`` is ChannelNorm).
            Default: 3.0.
        dmax: keyword-only; the final bound of ``d``, >= 0. Default: 5.0.
        warmup_steps: keyword-only; steps of the linear ramp of the bounds, >= 0. Default: 0.
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis``.
        - Output: the input's shape, dtype and memory format.
    """

    functional_op = "batch_renorm"
    needs_running_stats = True
    _repr_fields = ChannelNorm._repr_fields + ("rmax", "dmax", "warmup_steps")

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, *, rmax: float = 3.0, dmax: float = 5.0,
                 warmup_steps: int = 0, bias: bool = True, num_features: Optional[int] = None) -> None:
        if not track_running_stats:
            raise ValueError("BatchRenorm needs track_running_stats=True: r and d compare the batch with the "
                             "running statistics")
        require_backend(self.functional_op, backend)
        self.rmax, self.dmax, self.warmup_steps = rmax, dmax, warmup_steps  # checked in order by AffineNorm.__setattr__
        super().__init__(num_channels, eps, momentum, affine, track_running_stats, channel_axis, backend, device,
                         dtype, bias=bias, num_features=num_features)

    def forward(self, input: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Normalize ``input``; a ``mask`` is accepted in eval only (it is ChannelNorm's eval then).

        Args:
            input: the input, C channels on ``channel_axis``.
            mask: optional bool statistics mask (True = valid), as `ChannelNorm.forward`; in
                training it is a ``ValueError`` (this norm's training statistics take no mask).

        Returns:
            The normalized input, same shape, dtype and memory format.
        """
        axis = self._check_input(input)
        if mask is not None:
            return self._forward_eval_with_mask(input, mask)
        running_mean, running_var, tracked = self._running_buffers()
        weight, bias = self._affine()
        return batch_renorm_validated(input, axis, running_mean, running_var, weight, bias, self.training,
                                      self.momentum, self.eps, self.backend, tracked, self.rmax, self.dmax,
                                      self.warmup_steps)
