"""GhostNorm: ChannelNorm with statistics per virtual batch in training (Hoffer et al. 2017)."""
from __future__ import annotations

from typing import Optional

import torch

from ..functional.robust import ghost_norm_validated
from .channel import ChannelNorm


class GhostNorm(ChannelNorm):
    """Ghost / virtual batch normalization.

    Training: the batch axis (axis 0) is cut into consecutive virtual batches of
    ``virtual_batch_size`` samples (the last one has the remainder when the batch does not divide
    evenly), each normalized with its own mean and biased variance. Running statistics get one
    update per forward: the whole batch's mean and the pooled within-virtual-batch unbiased
    variance ``Σ_k SS_k / (n - K)`` (see ``ops.robust.ghost_running_update``). Eval, buffers and
    ``state_dict`` are exactly ChannelNorm's; with ``virtual_batch_size >= N`` it is ChannelNorm.
    Each virtual batch runs on ``backend`` (any backend that can run ChannelNorm).

    Args:
        num_channels: C, the number of channels (the size of the input's ``channel_axis``).
        eps: added to the variance before the square root, > 0. Default: 1e-5.
        momentum: weight of the new batch statistic in the running statistics, in [0, 1]; None is a
            cumulative average (weight ``1 / num_batches_tracked``). Default: 0.1.
        affine: learn a per-channel scale ``weight`` (initialised to 1) and shift ``bias``
            (initialised to 0). Default: True.
        track_running_stats: keep ``running_mean``, ``running_var`` (unbiased) and
            ``num_batches_tracked``; with False they are None and eval uses the batch's statistics
            too. Default: True.
        channel_axis: the input axis that holds the channels; negative counts from the end.
            Default: 1.
        backend: the backend each virtual batch runs on: ``"auto"``, ``"reference"``, ``"native"`` or
            ``"triton"``. Default: ``"auto"``.
        device (torch.device | str | None): device of the parameters and buffers. Default: None (torch's
            default device).
        dtype (torch.dtype | None): floating dtype of the parameters and buffers. Default: None (torch's
            default dtype).
        virtual_batch_size: keyword-only; samples per virtual batch in training, > 0. Every virtual
            batch, the last included, needs more than one value per channel. Default: 32.
        bias: keyword-only. False keeps the scale ``weight`` without a shift (``bias`` is None), as
            torch's ``bias=False``; no effect when ``affine=False``. Default: True.
        num_features: keyword-only; torch's name for ``num_channels`` (give one of the two).

    Shape:
        - Input: ``(N, C, *)``, any rank from 2 up, with the C channels on ``channel_axis`` and the
          batch on axis 0 (cut into virtual batches).
        - Output: the input's shape, dtype and memory format.
    """

    functional_op = "ghost_norm"
    _repr_fields = ChannelNorm._repr_fields + ("virtual_batch_size",)

    def __init__(self, num_channels: Optional[int] = None, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, track_running_stats: bool = True, channel_axis: int = 1,
                 backend: str = "auto", device=None, dtype=None, *, virtual_batch_size: int = 32, bias: bool
                     = True,
                 num_features: Optional[int] = None) -> None:
        self.virtual_batch_size = virtual_batch_size  # checked by AffineNorm.__setattr__
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
        return ghost_norm_validated(input, axis, running_mean, running_var, weight, bias, self._uses_batch_stats(),
                                    self.momentum, self.eps, self.backend, self.virtual_batch_size, tracked,
                                    self.channel_axis)
