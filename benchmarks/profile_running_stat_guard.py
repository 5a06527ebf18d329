"""Micro-timings of running-statistics guard forms on two 64-channel CPU buffers (best of 9 x 2000 calls, 1 thread).

    python benchmarks/profile_running_stat_guard.py

Rows: nograd (cat + 2 sums + 2 host reads inside two no_grad blocks), plain (the same without
them), item (.item() instead of float()), dot (cat + one torch.dot + one host read: the form
ops/moments.snapshot and keep_if_finite use), catsum (cat + cat().sum() + one host read), clones (2 clones
+ 2 sums + 2 host reads), sum_only, float_only. Prints the load average.
"""
import math
import os
import timeit

import torch

torch.set_num_threads(1)
rm, rv = torch.zeros(64), torch.ones(64)
def t(f, n=2000): return min(timeit.repeat(f, number=n, repeat=9)) / n * 1e6
def a():
    with torch.no_grad():
        s = torch.cat((rm, rv))
    with torch.no_grad():
        return math.isfinite(float(rm.sum()) + float(rv.sum()))
def b():
    s = torch.cat((rm, rv))
    return math.isfinite(float(rm.sum()) + float(rv.sum()))
def c():
    s = torch.cat((rm, rv))
    return math.isfinite(rm.sum().item() + rv.sum().item())
def d():
    s = torch.cat((rm, rv))
    return math.isfinite(float(rm.dot(rm)))
def e():
    s = torch.cat((rm, rv))
    return math.isfinite(float(torch.cat((rm, rv)).sum()))
def f():
    s = rm.clone(); s2 = rv.clone()
    return math.isfinite(float(rm.sum()) + float(rv.sum()))
def g():
    return rm.sum()
def h():
    return float(rm[0])
print("load", os.getloadavg())
for k, fn in dict(nograd=a, plain=b, item=c, dot=d, catsum=e, clones=f, sum_only=g, float_only=h).items(): print(k, round(t(fn), 2))
