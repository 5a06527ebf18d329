"""Where ChannelNorm's remaining CPU overhead at small shapes goes: layer by layer, and the guard's ops.

Training forward and forward + backward at one small shape (default 2x64x4x4, one thread), best of
``--repeat`` blocks of ``--number`` calls, for:

* ``torch_module``: ``nn.BatchNorm2d``;
* ``flat_guarded``: one hand-flattened forward with the same torch ops as the library's CPU training
  path (``cat`` snapshot, ``native_batch_norm``, ``dot`` + host read, ``num_batches_tracked.add_`` of a
  constant tensor) and the minimum input checks: the floor any layering of the same ops can reach;
* ``native``: ``ops.native.channel_norm`` called from a module forward (no validation, no dispatch);
* ``validated``: ``functional.core.channel_norm_validated`` (size checks + ``dispatch.resolve``);
* ``channelnorm``: ``cn.ChannelNorm`` as shipped (adds the module's input check and tensor reads).

And the raw ops without any module: ``batch_norm`` + ``add_(1)`` alone (what ``nn.BatchNorm2d`` runs),
the same through ``native_batch_norm`` (the kernel ``batch_norm`` reaches on CPU, two dispatch layers
less) and ``add_`` of a constant tensor (no scalar wrapping), then with the guard's ops added, to show
what an extra small op costs in a forward-only loop and in a forward + backward loop.

    python benchmarks/profile_cpu_layers.py [--shape 2,64,4,4] [--number 3000] [--repeat 9]
"""
from __future__ import annotations

import argparse
import math
import os
import timeit

import torch
from torch import nn

import channelnorm as cn
from channelnorm.functional.core import channel_norm_validated
from channelnorm.ops import native


ONE = torch.ones((), dtype=torch.long)


class FlatGuarded(cn.ChannelNorm):
    """The library's CPU training ops with no layering (a floor, not a replacement: no dispatch, no restore)."""

    def forward(self, input):
        if not isinstance(input, torch.Tensor) or input.ndim < 2 or input.shape[1] != self.num_channels:
            raise ValueError("bad input")
        buffers, params = self._buffers, self._parameters
        rm, rv, tracked = buffers["running_mean"], buffers["running_var"], buffers["num_batches_tracked"]
        if input.numel() // input.shape[1] <= 1:
            raise ValueError("one value per channel")
        saved = torch.cat((rm, rv))  # noqa: F841 (the snapshot a restore would use)
        y = torch.native_batch_norm(input, params["weight"], params["bias"], rm, rv, True, self.momentum,
                                    self.eps)[0]
        if not math.isfinite(rm.dot(rv).item()):
            raise RuntimeError("not finite")
        tracked.add_(ONE)
        return y


class NativeOnly(cn.ChannelNorm):
    def forward(self, input):
        b, p = self._buffers, self._parameters
        return native.channel_norm(input, b["running_mean"], b["running_var"], p["weight"], p["bias"], True,
                                   self.momentum, self.eps, 1, b["num_batches_tracked"])


class ValidatedOnly(cn.ChannelNorm):
    def forward(self, input):
        b, p = self._buffers, self._parameters
        return channel_norm_validated(input, 1, b["running_mean"], b["running_var"], p["weight"], p["bias"], True,
                                      self.momentum, self.eps, self.backend, b["num_batches_tracked"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="2,64,4,4")
    parser.add_argument("--number", type=int, default=3000)
    parser.add_argument("--repeat", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = tuple(int(s) for s in args.shape.split(","))
    x = torch.randn(*shape, requires_grad=True)
    grad = torch.randn(*shape)
    c = shape[1]

    def best_us(fn) -> float:
        return min(timeit.repeat(fn, number=args.number, repeat=args.repeat)) / args.number * 1e6

    print(f"shape {args.shape}, torch {torch.__version__}, 1 thread, load {os.getloadavg()[0]:.2f}")
    print(f"{'variant':19s} {'fwd us':>8s} {'fwd+bwd us':>11s}")
    for name, cls in (("torch_module", nn.BatchNorm2d), ("flat_guarded", FlatGuarded), ("native", NativeOnly),
                      ("validated", ValidatedOnly), ("channelnorm", cn.ChannelNorm)):
        m = cls(c).train()
        print(f"{name:19s} {best_us(lambda: m(x)):8.1f} {best_us(lambda: m(x).backward(grad)):11.1f}")

    w, b = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
    rm, rv, tracked = torch.zeros(c), torch.ones(c), torch.tensor(0)

    def raw():
        tracked.add_(1)
        return torch.batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5, False)

    def raw_native():
        tracked.add_(ONE)
        return torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)[0]

    def raw_guarded():
        torch.cat((rm, rv))
        y = torch.native_batch_norm(x, w, b, rm, rv, True, 0.1, 1e-5)[0]
        math.isfinite(rm.dot(rv).item())
        tracked.add_(ONE)
        return y

    for name, fn in (("raw ops", raw), ("raw native ops", raw_native), ("raw native + guard", raw_guarded)):
        print(f"{name:19s} {best_us(fn):8.1f} {best_us(lambda: fn().backward(grad)):11.1f}")


if __name__ == "__main__":
    main()
