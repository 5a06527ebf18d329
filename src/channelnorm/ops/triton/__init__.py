"""Triton backend (docs/design.md §4 and §6): fused normalization kernels for the family, NCHW and
NHWC, fp32/bf16/fp16.

Modules, in the order a call reaches them: ``backend`` (what ``ops.dispatch`` calls:
``unsupported_reason``, the family's entry points, the layout), ``plan`` (canonical view, regime,
tiles, splits, index width and the traffic model; plain integers, cached per call signature),
``norm`` (top to bottom: the ``@triton.jit`` kernels, the host forward and backward that launch
them, and the eager ``torch.autograd.Function``), ``custom_ops`` (the same host functions as
``torch.library`` ops with fake kernels and autograd, used under ``torch.compile``; imported on
first use).

Design (memory-bound kernels; nothing here has been timed on a GPU yet):

* Layout. Every input is addressed as a strided ``(B, C, S)`` view, no copy: NCHW is
  ``(N, C, H*W)`` with S contiguous; NHWC and channel-last tensors collapse to ``(1, C, N*H*W)``
  (channel scope) or ``(N, C, H*W)`` (per sample) with C contiguous. Triton specializes a stride
  of 1, so the contiguous axis is vectorized (checked in sm_90 PTX by ``tests/ops/triton/triton_sm90_compile.py``).
* Regimes (``plan.call_plan``). R1: a statistic's slice fits in registers (padded, at most
  ``plan.R1_MAX_TILE_BYTES`` of fp32 values): one program owns whole statistics; forward is one launch that
  reads x once and writes y once (2|X|), backward one launch (3|X|) plus, when several rows share a
  channel, a fixed-order sum of the dweight/dbias partials. R2: two kernels; the statistics pass
  streams chunks through a pipelined loop (``tl.range(num_stages=...)``, cp.async) and writes
  partials, the last program of each merge unit (an integer atomic ticket elects it) merges them in
  a fixed order and finalizes, the last unit updates the running statistics; the second pass runs
  in reverse program order so it starts on tiles still in L2 (2|X| forward, 3|X| backward). R3
  (x larger than the L2 share): the same kernels, 2|X| + the spill. Eval forward: one launch.
* Numerics. Statistics in fp32, shifted by a pivot (one element of the statistic's own data) and
  centered per tile with Chan merges (R2/R3) or an exact two-pass over registers (R1): an input
  with mean 1e4 keeps the precision of one with mean 0. No float atomics: bitwise reproducible.
* Host path. Plans are cached per (shape, strides, dtype size, scope, device limits); eager calls
  are one ``torch.autograd.Function`` node with one statistics buffer; the custom ops (tracing
  needs them) run only under ``torch.compile``.
* Offsets, partial and merge indices are int32 unless some can pass 2**31 - 1 (``plan.needs_int64``).
"""
