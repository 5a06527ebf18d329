"""Delegation to torch's own kernels (``torch.batch_norm``, ``torch.instance_norm``, ``torch.group_norm``,
``torch.layer_norm``).

Those kernels want the channel on axis 1, so the channel axis is moved there as a view. The one
semantic we add is the non-finite rule of docs/design.md §3.3: torch updates running statistics in
place, so ``_run_tracked`` undoes or withholds an update whose statistics are not finite.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._checks import per_channel
from .fused import ComposedActivation
from .layout import match_layout
from .moments import blend_if_finite, commit_if_finite, effective_momentum, keep_if_finite, momentum_weight, snapshot

# Sets, not tuples: both checks run on every "auto" call.
_OPS = frozenset(("channel_norm", "instance_norm", "group_norm", "channel_norm_act", "group_norm_act",
                  "layer_norm_2d"))
_GROUP_OPS = frozenset(("group_norm", "group_norm_act"))
_HALF = frozenset((torch.float16, torch.bfloat16))
_CHANNEL_OPS = frozenset(("channel_norm", "channel_norm_act"))


def unsupported_reason(op: str, x: torch.Tensor, channel_axis: int,
                       params: tuple[Optional[torch.Tensor], ...] = ()) -> Optional[str]:
    """Why torch's kernel cannot run this call at all, or None. Attribute checks only (every auto call)."""
    if op not in _OPS:
        return f"no native kernel for {op}"
    dtype = x.dtype
    as_input = as_float32 = False
    for p in params:
        # torch's kernels want the parameters and statistics all in the input's dtype, or all float32
        # with half-precision input (dtypes are singletons: `is` is the cheap test of the common case).
        if p is None:
            continue
        if p.dtype is dtype:
            as_input = True
        elif p.dtype is torch.float32 and dtype in _HALF:
            as_float32 = True
        else:
            return f"parameter dtype {p.dtype} does not match input dtype {dtype}"
    if as_input and as_float32:
        return (f"torch's kernels take {dtype} input with parameters and statistics all {dtype} or all "
                f"float32, not both")
    if as_float32 and op == "layer_norm_2d" and x.is_cuda:
        return f"torch's CUDA layer_norm is not documented to take {dtype} input with float32 parameters"
    if op == "instance_norm" and x.ndim < 3:
        return f"torch's instance_norm needs a spatial axis, got input of rank {x.ndim}"
    return None


def inexact_reason(op: str, x: torch.Tensor, channel_axis: int,
                   params: tuple[Optional[torch.Tensor], ...] = (), training: bool = True,
                   num_groups: Optional[int] = None) -> Optional[str]:
    """Why torch's kernel would not compute what the reference does for this call, or None.

    ``"auto"`` avoids these calls; ``backend="native"`` still runs them (it asks for torch's result).
    Each rule is a torch CPU kernel defect shown by tests/ops/test_auto_vs_reference.py.
    ``num_groups``: the group ops' number of groups (None for the others).
    """
    if x.is_cuda or op == "layer_norm_2d":
        # torch's CPU layer_norm matches the reference's error against float64 in float32, bfloat16 and
        # float16, at means up to 1e4 and in either layout (tests/functional/test_layer_norm_2d.py).
        return None
    if op in _GROUP_OPS:
        return _group_inexact_reason(x, channel_axis, params, num_groups)
    if x.dtype in _HALF:
        # Against a float64 oracle, torch's CPU half batch_norm (training) and instance_norm (training and
        # eval) are 10-100x less accurate than the reference once the mean is large next to the spread
        # (mean 100 or 1e4, 36 to 8192 values per channel: 6-118x in float16, 2-116x in bfloat16), which
        # the dispatch cannot see; group_norm and eval batch_norm (given statistics) match the reference.
        if not training and op in _CHANNEL_OPS:
            return None
        return f"torch's CPU {x.dtype} batch_norm/instance_norm statistics are less accurate than the reference"
    # (torch's instance_norm backward, wrong for some gradient layouts at any batch size, is made exact in
    # instance_norm below rather than avoided here: the gradient's strides are unknown in the forward.)
    return None


def _group_inexact_reason(x: torch.Tensor, channel_axis: int, params, num_groups: Optional[int]) -> Optional[str]:
    """``inexact_reason`` for torch's CPU group_norm (GroupNorm, LayerNorm and their fused forms).

    Shape reads and one contiguity test: it runs on every auto group norm call.
    """
    if not (x.is_contiguous() if channel_axis == 1 else x.movedim(channel_axis, 1).is_contiguous()):
        # Other layouts (channels_last) lose float32 precision at large means: mean 100 with unit
        # variance gives errors of 4e-3 (1e-5 on the contiguous layout).
        return "torch's CPU group_norm is imprecise on non-contiguous layouts (large means)"
    shape = x.shape
    channels = shape[channel_axis]
    per_sample = x.numel() // shape[0]  # the input is not empty
    if x.ndim in (4, 5) and (channels == 1 or per_sample == channels):
        # A contiguous (N, C, *spatial) with one channel or one spatial position is channels_last too
        # (e.g. one channel moved from axis -1), and torch may then run its channels_last kernel, as
        # imprecise (2e-3 against the reference's 5e-6 at mean 100): which one runs depends on size-1
        # strides that the dispatch should not guess.
        return "torch's CPU group_norm may run its imprecise channels_last kernel on this ambiguous layout"
    if shape[0] == 1 and per_sample == channels:
        # One sample without spatial extent: torch refuses it when every group is one channel.
        return "torch's group_norm refuses a single sample of single-value groups"
    if per_sample == num_groups:
        # One value per group: the exact output is the bias, and the reference's (x - mean) is exactly 0;
        # torch's x * scale + shift form with scale = 1/sqrt(eps) leaves 2e-3 at mean 100.
        return "torch's group_norm is imprecise for one value per group"
    for p in params:
        if p is not None and p.dtype in _HALF:
            # Half-precision weight/bias: at mean 100 torch's weight gradient comes out 15-175x less
            # accurate than the reference's against a float64 oracle (its input gradient 2-20x).
            return f"torch's CPU group_norm backward is less accurate with {p.dtype} parameters"
    return None


def _kernel_safe_gradient(y: torch.Tensor) -> torch.Tensor:
    """Give torch's batch_norm backward a gradient laid out as its own output ``y``.

    torch's CPU batch_norm backward computes wrong gradients when the incoming gradient is contiguous
    in one memory format and the input in another while their ``suggest_memory_format`` agree: it then
    reads the gradient as if laid out like the input. That takes a size-1 axis with a non-canonical
    stride (e.g. shape (3, 2, 1, 2) with strides (4, 1, 1, 2), both contiguous and channels_last), so
    calls without one pay nothing. Copying such a gradient into ``y``'s strides, which the kernel chose
    for its input's format, makes both agree. The strides are only known in the backward, hence a hook.
    Under torch.compile the compiled backward runs instead (and hooks that read strides cannot be
    traced), so nothing is registered there.
    """
    if y.requires_grad and not torch.compiler.is_compiling():
        shape, strides = y.shape, y.stride()

        def relayout(grad: torch.Tensor):
            if grad is None or grad.stride() == strides:
                return None
            return torch.empty_strided(shape, strides, dtype=grad.dtype, device=grad.device).copy_(grad)

        y.register_hook(relayout)
    return y


def _run_tracked(kernel, x, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps, cudnn):
    """Run ``kernel`` (``torch.batch_norm`` or ``torch.instance_norm``), which updates the running buffers
    in place, keeping the rule of docs/design.md: a batch whose statistics are not finite leaves the
    buffers untouched.

    CPU buffers are updated in place and restored on failure (host check; nothing to synchronize).
    Elsewhere, and while torch.compile traces, the kernel updates copies that a tensor-op ``where``
    commits, so the device never waits for the host. With ``momentum=None`` there, the kernel writes the
    batch's statistics into the copies (momentum 1) and ``moments`` blends them in with the cumulative
    weight as a tensor: reading ``num_batches_tracked`` on the host would synchronize a GPU and, under
    ``torch.compile(fullgraph=True)``, fail inside the compiler.
    """
    if running_mean.is_cpu and not torch.compiler.is_compiling():
        m = effective_momentum(momentum, num_batches_tracked)
        # The CPU form of the rule: update in place, restore from the snapshot if not finite (ops/moments.py).
        saved = snapshot(running_mean, running_var)
        y = kernel(x, weight, bias, running_mean, running_var, True, m, eps, cudnn)
        keep_if_finite(saved, running_mean, running_var, num_batches_tracked)
        return y
    new_mean, new_var = running_mean.clone(), running_var.clone()
    if momentum is None:
        y = kernel(x, weight, bias, new_mean, new_var, True, 1.0, eps, cudnn)
        blend_if_finite(running_mean, running_var, num_batches_tracked, new_mean, new_var,
                        momentum_weight(None, num_batches_tracked, running_mean))
        return y
    y = kernel(x, weight, bias, new_mean, new_var, True, float(momentum), eps, cudnn)
    commit_if_finite(running_mean, running_var, num_batches_tracked, new_mean, new_var)
    return y


def _cpu_training_batch_norm(x, weight, bias, running_mean, running_var, num_batches_tracked, momentum, eps):
    """``_run_tracked(torch.batch_norm, ...)`` for CPU buffers outside torch.compile, in one function: the
    hottest path of a small CPU model, where each call layer costs ~0.2 us of a forward+backward.

    * The kernel is ``native_batch_norm``, which ``torch.batch_norm`` reaches on CPU (non-empty input, the
      only kind that gets here) through ``_batch_norm_impl_index``: the same computation and autograd node
      (NativeBatchNormBackward0), two dispatch layers (~3 us a small forward+backward) less. Those layers
      check the per-channel sizes, so this does too: a module checks its tensors at construction only,
      and one replaced later by a tensor of another size (``norm.weight.data = ...``) would make
      ``native_batch_norm`` read and write past its end. A mismatch takes torch.batch_norm's path, which
      refuses it naming both sizes.
    * The non-finite rule as ``_run_tracked`` keeps it on CPU: one copy of both buffers before the
      kernel's in-place update, ``moments.keep_if_finite`` after it.
    """
    c = x.shape[1]
    if (running_mean.numel() != c or running_var.numel() != c or (weight is not None and weight.numel() != c)
            or (bias is not None and bias.numel() != c)):
        return _run_tracked(torch.batch_norm, x, weight, bias, running_mean, running_var, num_batches_tracked,
                            momentum, eps, False)
    m = effective_momentum(momentum, num_batches_tracked)
    saved = snapshot(running_mean, running_var)
    y = torch.native_batch_norm(x, weight, bias, running_mean, running_var, True, m, eps)[0]
    keep_if_finite(saved, running_mean, running_var, num_batches_tracked)
    return y


# torch.batch_norm / torch.instance_norm / torch.group_norm directly: the arguments are validated
# already, and torch.nn.functional's wrappers would check them again on every call. Channel axis 1
# (the common case) needs no move: two identity permutes would add two autograd nodes per call.

def channel_norm(x, running_mean, running_var, weight, bias, training, momentum, eps, channel_axis,
                 num_batches_tracked: Optional[torch.Tensor] = None) -> torch.Tensor:
    xm = x if channel_axis == 1 else x.movedim(channel_axis, 1)
    # torch's kernels read the cudnn flag only for CUDA input (cuDNN, MIOpen); reading it costs 0.25 us.
    cudnn = x.is_cuda and torch.backends.cudnn.enabled
    if training and running_mean is not None:
        if running_mean.is_cpu and not torch.compiler.is_compiling():
            y = _cpu_training_batch_norm(xm, weight, bias, running_mean, running_var, num_batches_tracked,
                                         momentum, eps)
        else:
            y = _run_tracked(torch.batch_norm, xm, weight, bias, running_mean, running_var, num_batches_tracked,
                             momentum, eps, cudnn)
    else:
        y = torch.batch_norm(xm, weight, bias, running_mean, running_var, bool(training), 0.0, eps, cudnn)
    if 1 in x.shape:  # only a size-1 axis makes strides ambiguous (see _kernel_safe_gradient)
        y = _kernel_safe_gradient(y)
    return match_layout(y if channel_axis == 1 else y.movedim(1, channel_axis), x)


def _cpu_instance_norm(x, weight, bias, eps) -> torch.Tensor:
    """Instance norm of ``x`` (channels on axis 1) with its own statistics and no running buffers, on CPU.

    torch.instance_norm runs batch_norm on ``x`` viewed as (1, N * C, *spatial): a size-1 batch axis, so a
    gradient whose N and C axes are innermost (InstanceNorm -> flatten(2).permute(2, 0, 1), as before
    nn.MultiheadAttention) reaches batch_norm's backward contiguous as channels_last with an arbitrary
    batch stride, which it reads wrongly (see _kernel_safe_gradient). This runs the same kernel on the view
    (1, N * C, L), the spatial axes flattened: a rank with no channels_last format, so every gradient
    layout is read right, with nothing to check or copy in the backward. Calling ``native_batch_norm``
    (what torch.instance_norm reaches on CPU) on that view directly also skips torch.instance_norm's own
    view of the input and batch_norm's two dispatch layers (as _cpu_training_batch_norm): the flattened
    view costs no dispatcher call or autograd node more than torch.instance_norm runs itself. Double
    backward is native_batch_norm's own.
    """
    n, c = x.shape[0], x.shape[1]
    if (weight is not None and weight.numel() != c) or (bias is not None and bias.numel() != c):
        # native_batch_norm would read past the end of a too-short tensor, and torch.instance_norm's own
        # message counts N * C elements; name the sizes the user set.
        per_channel("instance_norm", x, 1, weight=weight, bias=bias)
    # reshape: a view of a contiguous input; torch.instance_norm copies other layouts to contiguous too.
    y = torch.native_batch_norm(x.reshape(1, n * c, -1), None if weight is None else weight.repeat(n),
                                None if bias is None else bias.repeat(n), None, None, True, 0.0, eps)[0]
    return y.view_as(x)  # view_as: a third of the host cost of view(shape)


def instance_norm(x, running_mean, running_var, weight, bias, use_input_stats, momentum, eps, channel_axis,
                  num_batches_tracked: Optional[torch.Tensor] = None) -> torch.Tensor:
    xm = x if channel_axis == 1 else x.movedim(channel_axis, 1)
    # spelled out rather than any(generator): this runs on every call, and the generator costs ~2 us
    needs_grad = torch.is_grad_enabled() and ((weight is not None and weight.requires_grad) or x.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if needs_grad and use_input_stats and running_mean is None and x.is_cpu:
        # InstanceNorm's default (no running statistics) in training; torch.compile and torch.func trace the
        # same ops.
        y = _cpu_instance_norm(xm, weight, bias, eps)
        return match_layout(y if channel_axis == 1 else y.movedim(1, channel_axis), x)
    # Otherwise torch.instance_norm, on the spatial axes flattened for the layout reason of
    # _cpu_instance_norm, where a gradient can reach the kernel: without one (eval, no_grad, frozen inputs)
    # there is nothing to misread, and torch.instance_norm's one call costs less host time than the ops of
    # _cpu_instance_norm (measured: benchmarks/results/cpu_overhead_turn8.md).
    xk = xm.flatten(2) if xm.ndim > 3 and needs_grad else xm
    cudnn = x.is_cuda and torch.backends.cudnn.enabled  # read only for CUDA input (see channel_norm)
    try:
        if use_input_stats and running_mean is not None:
            y = _run_tracked(torch.instance_norm, xk, weight, bias, running_mean, running_var, num_batches_tracked,
                             momentum, eps, cudnn)
        else:
            y = torch.instance_norm(xk, weight, bias, running_mean, running_var, bool(use_input_stats), 0.0, eps,
                                    cudnn)
    except RuntimeError:
        # torch.instance_norm counts a resized weight's elements N * C times; name the sizes the user set.
        per_channel("instance_norm", xm, 1, weight=weight, bias=bias)
        raise
    if xk is not xm:
        y = y.view_as(xm)  # view_as: a third of the host cost of view(shape)
    return match_layout(y if channel_axis == 1 else y.movedim(1, channel_axis), x)


def group_norm(x, num_groups, weight, bias, eps, channel_axis) -> torch.Tensor:
    cudnn = x.is_cuda and torch.backends.cudnn.enabled  # read only for CUDA input (see channel_norm)
    if channel_axis == 1:
        return match_layout(torch.group_norm(x, num_groups, weight, bias, eps, cudnn), x)
    y = torch.group_norm(x.movedim(channel_axis, 1), num_groups, weight, bias, eps, cudnn)
    return match_layout(y.movedim(1, channel_axis), x)


def layer_norm_2d(x, weight, bias, eps, channel_axis) -> torch.Tensor:
    # torch's layer_norm normalizes over trailing axes: the channel axis moves last as a view (no copy for
    # a channels-last layout) and back.
    last = x.ndim - 1
    xm = x if channel_axis == last else x.movedim(channel_axis, last)
    y = torch.layer_norm(xm, (x.shape[channel_axis],), weight, bias, eps)
    return match_layout(y if channel_axis == last else y.movedim(last, channel_axis), x)


class NativeBackend(ComposedActivation):
    """torch's kernels as a ``dispatch.Backend``; the fused forms are composed."""

    name = "native"
    unsupported_reason = staticmethod(unsupported_reason)
    inexact_reason = staticmethod(inexact_reason)
    channel_norm = staticmethod(channel_norm)
    instance_norm = staticmethod(instance_norm)
    group_norm = staticmethod(group_norm)
    layer_norm_2d = staticmethod(layer_norm_2d)


NATIVE = NativeBackend()
