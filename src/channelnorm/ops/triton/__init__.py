"""Triton backend (docs/design.md §4 and §6).

Modules: ``_kernels`` (jit only, no validation), ``plan`` (canonical view, tiles, splits, index
width: plain integers), ``forward``/``backward``/``reduce`` (host launch functions),
``custom_ops`` (``torch.library`` ops + fake kernels + autograd), ``backend`` (what
``ops.dispatch`` calls: ``unsupported_reason`` and the family's entry points).

Design, from first principles (memory-bound kernels; nothing here has been timed on a GPU yet):

* Layout. Every input is addressed as a strided ``(B, C, S)`` view, no copy: NCHW is
  ``(N, C, H*W)`` with S contiguous; NHWC and channel-last tensors collapse to ``(1, C, N*H*W)``
  (channel scope) or ``(N, C, H*W)`` (per sample) with C contiguous. Tiles are ``[BLOCK_S,
  BLOCK_C]`` with the long side on the contiguous axis (NCHW: up to 2048 x 1, widened over
  channels when H*W is small; NHWC: up to 128 channels x rows), so loads are coalesced and, since
  Triton specializes a stride of 1, vectorized (checked in sm_90 PTX by
  ``tests/triton_sm90_compile.py``).
* Training forward. Pass 1 (``partial_stats_kernel``): each program reduces a channel block over
  a chunk of S (and, for channel scope on NCHW with large N, several whole rows) to
  (count, mean, M2), each tile centered on its own mean after shifting by a pivot element of the
  statistic. About 4 programs per SM: small C with huge N*H*W splits S; large C with small N*H*W
  needs no split. Per-sample scopes whose groups are contiguous runs (NCHW, (N, C) rows) take
  statistics per group directly; otherwise a second merge level combines a group's channels.
  Then a fixed-order Chan merge (``merge_stats_kernel``), ``finalize_kernel`` (invstd, mean and
  var per statistic: statistics are never expanded per channel; the elementwise kernels read them
  at ``c // cpg`` and weight/bias per channel), and pass 2 (``apply_kernel``): one read, one
  write, with the residual add and activation fused.
  ``running_update_kernel`` blends the running statistics all-or-nothing in one launch.
  Eval forward is ``finalize_kernel`` + ``apply_kernel``: one read, one write of x.
* Backward. ``backward_partials_kernel`` (sums of g and g*xhat per program, g the gradient
  through the recomputed activation; writes the residual's gradient on the way), fixed-order
  ``sum_rows_kernel``, ``coefficients_kernel`` (dx = invstd*w*g + beta*xhat + gamma, beta and
  gamma per statistic), then ``backward_apply_kernel``. No atomics anywhere: gradients are
  bitwise reproducible.
* Layer norm over (N, C) rows (one statistic per row, S = 1): the backward is one row-block
  kernel (``rows_backward_kernel``, 16 rows x all channels per program, two sweeps) plus a
  fixed-order reduction of its [N/16, C] dweight/dbias partials. Group norm with several groups
  over (N, C) rows still takes the generic path, whose backward partials are per (row, channel):
  correct, but they are as large as x in fp32.
* Traffic: eval forward 2|X|; training forward 3|X| (x read twice); backward 5|X| (x and dy
  read twice). The second read can hit L2 for tensors of tens of MB.
* Offsets are int32 unless some offset can pass 2**31 - 1 (``plan.needs_int64``).
"""
