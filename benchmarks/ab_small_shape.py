"""In-process A/B at (2, 64, 4, 4): each library module against its torch module, forward and forward+backward,
best of N rounds x 200 calls, interleaved (ours, torch, torch, ours), 1 thread; plus dispatch.resolve and the
module input check alone (best of 5 x 1000).

    python benchmarks/ab_small_shape.py [ROUNDS]
"""
import os
import sys
import timeit

import torch
torch.set_num_threads(1)
import channelnorm as cn
from channelnorm.ops import dispatch
from torch import nn
shape = (2, 64, 4, 4)
x = torch.randn(shape)
xg = x.clone().requires_grad_()
pairs = {
 "channel": (cn.ChannelNorm(64), nn.BatchNorm2d(64)),
 "group": (cn.GroupNorm(8, 64), nn.GroupNorm(8, 64)),
 "instance": (cn.InstanceNorm(64), nn.InstanceNorm2d(64, affine=True)),
}
def fwd(m): return lambda: m(x)
def fwdbwd(m): return lambda: m(xg).sum().backward()
res = {}
N = 200
for r in range(int(sys.argv[1]) if len(sys.argv) > 1 else 7):
    for name, (a, b) in pairs.items():
        for mode, f in (("fwd", fwd), ("fwdbwd", fwdbwd)):
            for side, m in (("ours", a), ("torch", b), ("torch", b), ("ours", a)):
                t = timeit.timeit(f(m), number=N) / N * 1e6
                k = (name, mode, side)
                res[k] = min(res.get(k, 1e9), t)
w, b_ = pairs["channel"][0].weight, pairs["channel"][0].bias
pieces = {
 "resolve": lambda: dispatch.resolve("auto", "channel_norm", x, 1, (w, b_, w, w)),
 "check_input": lambda: pairs["channel"][0]._check_input(x),
}
for k, f in pieces.items():
    res[(k,)] = min(timeit.repeat(f, number=1000, repeat=5)) / 1000 * 1e6
print("load", os.getloadavg())
for name in pairs:
    for mode in ("fwd", "fwdbwd"):
        o, t = res[(name, mode, "ours")], res[(name, mode, "torch")]
        print(f"{name:9s} {mode:7s} ours {o:7.1f} torch {t:7.1f} ratio {o/t:5.2f}")
for k in pieces: print(k, round(res[(k,)], 2))
