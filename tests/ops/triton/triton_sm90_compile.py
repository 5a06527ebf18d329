"""Compile the Triton kernels for an H100 (sm_90) without a GPU; run as a script (not under the interpreter).

Triton's interpreter forgives what the GPU compiler rejects (types, layouts), so this lowers a
covering set of kernel variants (both regimes, fp32/bf16/fp16, NCHW/NHWC, int32/int64 offsets) to
PTX and runs the ptxas bundled in the triton wheel with ``-v`` on each. It checks:

* the x/y/dy/dx traffic of the main layouts uses 16-byte (or 8-byte) vector loads and stores;
* the statistics loops (``stats_kernel``, ``backward_partials_kernel``) are software-pipelined:
  their PTX contains ``cp.async`` (a loop Triton did not pipeline has none);
* no variant spills: no ``.local`` state space in the PTX and ptxas reports 0 bytes of spill
  stores and loads;

and records each variant's registers per thread, shared memory and spill bytes. Arguments are
specialized as Triton does at launch: pointers 16-byte aligned, the contiguous stride equal to 1,
sizes that are multiples of 16 marked as such.

    python tests/ops/triton/triton_sm90_compile.py                  # exit status 0 = every check held
    python tests/ops/triton/triton_sm90_compile.py --record FILE    # also write the per-variant table as JSON
"""
import argparse
import datetime
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").exists())
sys.path.insert(0, str(ROOT / "src"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from channelnorm.ops.triton import norm as K  # noqa: E402
from channelnorm.ops.triton import plan  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
PTXAS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas-blackwell"  # what triton uses for sm_90+
DATA_PTRS = ("x_ptr", "y_ptr", "dy_ptr", "dx_ptr", "res_ptr", "dres_ptr")
PARAM_PTRS = ("w_ptr", "b_ptr", "rm_ptr", "rv_ptr")
FLOATS = ("eps", "momentum", "unbias", "inv_n")
INT_PTRS = ("nbt_ptr",)
COUNTER_PTRS = ("counter_ptr",)


def compile_variant(kernel, const, data_dtype="fp32", div16=(), param_dtype="fp32", i64=(), num_warps=4, maxnreg=None):
    params = list(inspect.signature(kernel.fn).parameters)
    sig, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(params):
        if name in const:
            sig[name] = "constexpr"
            constexprs[(i,)] = const[name]
        elif name.endswith("_ptr"):
            sig[name] = "*" + (data_dtype if name in DATA_PTRS else param_dtype if name in PARAM_PTRS else
                               "i64" if name in INT_PTRS else "i32" if name in COUNTER_PTRS else "fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i64" if name in i64 else "i32"
            if name in div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    if maxnreg is None and kernel in (K.stats_kernel, K.backward_partials_kernel):
        maxnreg = plan.SPLIT_MAXNREG   # as norm.py's host forward and backward launch them
    options = {"num_warps": num_warps, **({"maxnreg": maxnreg} if maxnreg else {})}
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs), target=TARGET,
                          options=options)


def ptxas_report(ptx: str) -> dict:
    """Registers, spill bytes and shared memory of the kernel as ptxas -v reports them for sm_90a."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        # The flags triton's own compile passes (backends/nvidia/compiler.py, make_cubin).
        done = subprocess.run([str(PTXAS), "-lineinfo", "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a", str(src),
                               "-o", str(Path(tmp) / "k.cubin")], capture_output=True, text=True, timeout=300)
    text = done.stdout + done.stderr
    if done.returncode != 0:
        raise RuntimeError(text[-2000:])
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    smem = re.search(r"(\d+) bytes smem", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_store_bytes": int(spill.group(1)) if spill else 0,
            "spill_load_bytes": int(spill.group(2)) if spill else 0,
            "static_smem_bytes": int(smem.group(1)) if smem else 0}


def vector_ops(ptx: str) -> int:
    """Vector global loads/stores plus 8/16-byte asynchronous copies (what a pipelined load becomes)."""
    return (len(re.findall(r"(?:ld|st)\.global\S*\.v[24]", ptx))
            + len(re.findall(r"cp\.async\.\S+ \[[^]]*\], \[[^]]*\], 0x(?:10|8)\b", ptx)))


NCHW = dict(ss=1, BLOCK_S=2048, BLOCK_C=1)
NHWC = dict(sc=1, BLOCK_S=64, BLOCK_C=32)
DIV16 = ("S", "C", "sb", "ss", "sc", "chunk_len")
MERGE = dict(BLOCK_P=16, BLOCK_G=32, BLOCK_J=1)
MERGE_GROUPED = dict(BLOCK_P=2, BLOCK_G=4, BLOCK_J=64)


def variants():
    """(name, kernel, constexprs, data dtype, div16, i64, num_warps, checks)."""
    out = []
    for lname, layout in (("nchw", NCHW), ("nhwc", NHWC)):
        for dtype in ("fp32", "bf16", "fp16"):
            itemsize = 4 if dtype == "fp32" else 2
            tile = dict(layout)
            if lname == "nchw":
                tile["BLOCK_S"] = plan.TILE_BYTES // itemsize
            else:
                tile["BLOCK_S"] = plan.TILE_BYTES // itemsize // tile["BLOCK_C"]
            div16 = tuple(d for d in DIV16 if d not in tile)
            stage = dict(NUM_STAGES=plan.NUM_STAGES, INT64=False)
            for grouped, merge in ((False, MERGE), (True, MERGE_GROUPED)):
                out.append((f"stats_kernel/{lname}/{dtype}/grouped={grouped}", K.stats_kernel,
                            dict(tile, PER_SAMPLE=grouped, GROUPED=grouped, UPDATE_RUNNING=not grouped,
                                 HAS_NBT=True, **merge, **stage), dtype, div16, (), plan.SPLIT_NUM_WARPS,
                            ("cp.async", "vector")))
            # The backward passes load x and dy: half the elements per tile (plan.bwd_split).
            bwd_tile = dict(tile, BLOCK_S=max(1, tile["BLOCK_S"] // 2))
            for act, res in ((0, False), (1, True), (2, False), (3, True)) if dtype != "fp16" else ((0, False),):
                common = dict(tile, ACT=act, HAS_RES=res, HAS_W=True, HAS_B=not res, INT64=False)
                bwd = dict(bwd_tile, ACT=act, HAS_RES=res, HAS_W=True, HAS_B=not res, INT64=False)
                out.append((f"apply_kernel/{lname}/{dtype}/act={act}", K.apply_kernel,
                            dict(common, FROM_RUNNING=False, REVERSE=True), dtype, div16, (), 4, ("vector",)))
                out.append((f"backward_apply_kernel/{lname}/{dtype}/act={act}", K.backward_apply_kernel,
                            dict(bwd, REVERSE=True), dtype, div16, (), 4, ("vector",)))
                out.append((f"backward_partials_kernel/{lname}/{dtype}/act={act}", K.backward_partials_kernel,
                            dict(bwd, WRITE_DRES=res, PER_SAMPLE=False, GROUPED=False, BATCH_STATS=True,
                                 NUM_STAGES=plan.NUM_STAGES, **MERGE), dtype, div16, (), plan.SPLIT_NUM_WARPS,
                            ("cp.async", "vector")))
            out.append((f"apply_kernel/{lname}/{dtype}/eval", K.apply_kernel,
                        dict(tile, ACT=0, HAS_RES=False, HAS_W=True, HAS_B=True, INT64=False, FROM_RUNNING=True,
                             REVERSE=False), dtype, div16, (), 4, ("vector",)))
    # R1 at its largest tiles (R1_MAX_ELEMENTS fp32 per tensor, 8 warps): the register-pressure worst case.
    # Geometries of representative shapes; div16 lists the arguments Triton would see as multiples of 16.
    r1_max = plan.R1_MAX_ELEMENTS
    every = ("U", "su", "V", "K", "sk", "s_row")
    r1_geoms = {   # name: (constexprs, div16, vectorizable)
        "channel_nchw_16x16": (dict(BLOCK_U=16, BLOCK_V=256, BLOCK_K=r1_max // 4096, CH_MODE=0, sv=1), every, True),
        "channel_nchw_7x7": (dict(BLOCK_U=32, BLOCK_V=64, BLOCK_K=r1_max // 2048, CH_MODE=0, sv=1),
                             ("U", "su", "K", "s_row"), False),      # rows of 49: nothing aligned to vectorize
        "channel_nhwc": (dict(BLOCK_U=1, BLOCK_V=128, BLOCK_K=r1_max // 128, CH_MODE=0, sk=1),
                         ("K", "sv", "s_row", "su"), True),
        "group_nhwc": (dict(BLOCK_U=64, BLOCK_V=64, BLOCK_K=r1_max // 4096, CH_MODE=1, sv=1),
                       ("su", "V", "K", "sk", "s_row"), True),
        "layer_rows": (dict(BLOCK_U=1, BLOCK_V=1024, BLOCK_K=r1_max // 1024, CH_MODE=2, sv=1), every, True),
    }
    for gname, (geo, div16, vectorizable) in r1_geoms.items():
        checks = ("vector",) if vectorizable else ()
        for dtype in ("fp32", "bf16"):
            fwd = {k: v for k, v in geo.items() if k != "CH_MODE"}
            warps = 16 if geo["BLOCK_U"] * geo["BLOCK_V"] * geo["BLOCK_K"] >= 4096 else 8   # as plan.r1_geometry
            out.append((f"r1_forward_kernel/{gname}/{dtype}", K.r1_forward_kernel,
                        dict(fwd, ACT=2, HAS_RES=True, HAS_W=True, HAS_B=True, BATCH_STATS=True,
                             UPDATE_RUNNING=geo["CH_MODE"] == 0, HAS_NBT=True, INT64=False),
                        dtype, div16, (), warps, checks))
            out.append((f"r1_backward_kernel/{gname}/{dtype}", K.r1_backward_kernel,
                        dict(geo, ACT=2, HAS_RES=True, WRITE_DRES=True, HAS_W=True, HAS_B=True, BATCH_STATS=True,
                             INT64=False), dtype, div16 + ("C",), (), warps, checks))
    # One element per statistic (e.g. group norm of (N, C) with C groups): Triton passes sizes equal to
    # 1 as constants, so U and V arrive as Python ints.
    for kernel, extra in ((K.r1_forward_kernel, dict(UPDATE_RUNNING=False, HAS_NBT=False)),
                          (K.r1_backward_kernel, dict(CH_MODE=1, WRITE_DRES=False))):
        out.append((f"{kernel.fn.__name__}/one_element", kernel,
                    dict(BLOCK_U=1, BLOCK_V=1, BLOCK_K=32, U=1, V=1, su=1, sv=1, ACT=0, HAS_RES=False, HAS_W=True,
                         HAS_B=True, BATCH_STATS=True, INT64=False, **extra), "fp32", (), (), 4, ()))
    # > 2**31 elements: 64-bit offsets and partial indices.
    big = dict(NHWC, BLOCK_S=128, INT64=True)
    big_bwd = dict(big, BLOCK_S=64)
    out.append(("stats_kernel/nhwc/bf16/int64", K.stats_kernel,
                dict(big, PER_SAMPLE=False, GROUPED=False, UPDATE_RUNNING=True, HAS_NBT=True,
                     NUM_STAGES=plan.NUM_STAGES, **MERGE), "bf16", ("C", "sb", "ss"), ("sb", "ss"), plan.SPLIT_NUM_WARPS,
                ("cp.async",)))
    out.append(("backward_partials_kernel/nhwc/bf16/int64", K.backward_partials_kernel,
                dict(big_bwd, ACT=1, HAS_RES=True, WRITE_DRES=True, HAS_W=True, HAS_B=True, PER_SAMPLE=False,
                     GROUPED=False, BATCH_STATS=True, NUM_STAGES=plan.NUM_STAGES, **MERGE), "bf16", ("C", "sb", "ss"),
                ("sb", "ss"), plan.SPLIT_NUM_WARPS, ("cp.async",)))
    for kernel in (K.apply_kernel, K.backward_apply_kernel):
        extra = dict(FROM_RUNNING=False) if kernel is K.apply_kernel else {}
        out.append((f"{kernel.fn.__name__}/nhwc/bf16/int64", kernel,
                    dict(big if kernel is K.apply_kernel else big_bwd, ACT=1, HAS_RES=True, HAS_W=True, HAS_B=True,
                         REVERSE=True, **extra), "bf16",
                    ("C", "sb", "ss"), ("sb", "ss"), 4, ("vector",)))
    out.append(("r1_forward_kernel/channel_nhwc/bf16/int64", K.r1_forward_kernel,
                dict(BLOCK_U=1, BLOCK_V=128, BLOCK_K=32, ACT=0, HAS_RES=False, HAS_W=True, HAS_B=True,
                     BATCH_STATS=True, UPDATE_RUNNING=True, HAS_NBT=True, INT64=True, sk=1), "bf16",
                ("K", "sv", "su", "s_row"), ("sv", "su"), 16, ("vector",)))
    out.append(("r1_backward_kernel/layer_rows/bf16/int64", K.r1_backward_kernel,
                dict(BLOCK_U=1, BLOCK_V=1024, BLOCK_K=4, CH_MODE=2, ACT=0, HAS_RES=False, WRITE_DRES=False,
                     HAS_W=True, HAS_B=True, BATCH_STATS=True, INT64=True, sv=1), "bf16", ("V", "sk", "C", "s_row"),
                ("sk",), 16, ("vector",)))
    out.append(("sum_rows_kernel", K.sum_rows_kernel, dict(BLOCK_R=16, BLOCK_K=128), "fp32", (), (), 4, ()))
    for p in ("fp32", "bf16"):
        out.append((f"running_update_kernel/{p}", K.running_update_kernel, dict(HAS_NBT=True, BLOCK=1024), "fp32",
                    (), (), 4, ()))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--record", type=Path, help="write the per-variant table (JSON) here")
    args = parser.parse_args(argv)
    rows, failures = [], []
    for name, kernel, const, dtype, div16, i64, warps, checks in variants():
        compiled = compile_variant(kernel, const, dtype, div16, i64=i64, num_warps=warps)
        ptx = compiled.asm["ptx"]
        report = ptxas_report(ptx)
        row = {"variant": name, "num_warps": warps, **report, "cp_async": len(re.findall(r"cp\.async\.", ptx)),
               "vector_ld_st": vector_ops(ptx), "local_in_ptx": ".local" in ptx,
               "dynamic_smem_bytes": compiled.metadata.shared}
        rows.append(row)
        if "cp.async" in checks and row["cp_async"] == 0:
            failures.append(f"{name}: statistics loop not pipelined (no cp.async)")
        if "vector" in checks and row["vector_ld_st"] == 0:
            failures.append(f"{name}: no vector loads/stores")
        if row["local_in_ptx"] or row["spill_store_bytes"] or row["spill_load_bytes"]:
            failures.append(f"{name}: local memory / spills ({row['spill_store_bytes']} B stores, "
                            f"{row['spill_load_bytes']} B loads)")
        print(f"{name}: {row['registers']} regs, {row['spill_store_bytes']} B spill, cp.async {row['cp_async']}, "
              f"vector ld/st {row['vector_ld_st']}, smem {row['dynamic_smem_bytes']} B")
    if args.record:
        git = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
        args.record.write_text(json.dumps({
            "command": "python tests/ops/triton/triton_sm90_compile.py --record " + str(args.record.name),
            "target": "sm_90a (ptxas bundled with triton, no GPU)", "triton": triton.__version__,
            "git_hash": git.strip(), "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "failures": failures, "variants": rows}, indent=1) + "\n")
    for f in failures:
        print("FAIL", f)
    print(f"compiled {len(rows)} kernel variants for sm_90; {len(failures)} failed checks")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
