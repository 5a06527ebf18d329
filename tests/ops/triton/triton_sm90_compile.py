"""Compile the Triton kernels for an H100 (sm_90) without a GPU; run as a script (not under the interpreter).

Triton's interpreter forgives what the GPU compiler rejects (types, layouts), so this lowers a
covering set of kernel variants to PTX and cubin with the ptxas bundled in the triton wheel, and
checks that the x/y/dy/dx traffic of the main layouts uses 16-byte vector loads and stores.
Arguments are specialized as Triton does at launch: pointers 16-byte aligned, the contiguous
stride equal to 1, sizes that are multiples of 16 marked as such.

    python tests/triton_sm90_compile.py      # exit status 0 = every variant compiled and vectorized
"""
import inspect
import os
import re
import sys
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "src"))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from channelnorm.ops.triton import _kernels as K  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
DATA_PTRS = ("x_ptr", "y_ptr", "dy_ptr", "dx_ptr", "res_ptr", "dres_ptr")
FLOATS = ("eps", "momentum", "unbias", "inv_n")


def compile_variant(kernel, const, data_dtype="fp32", div16=(), param_dtype="fp32", i64=()):
    params = list(inspect.signature(kernel.fn).parameters)
    sig, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(params):
        if name in const:
            sig[name] = "constexpr"
            constexprs[(i,)] = const[name]
        elif name.endswith("_ptr"):
            sig[name] = "*" + (data_dtype if name in DATA_PTRS else
                               "i64" if name == "nbt_ptr" else
                               param_dtype if name in ("w_ptr", "b_ptr", "rm_ptr", "rv_ptr", "pivot_ptr", "m2_ptr")
                               else "fp32")
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i64" if name in i64 else "i32"
            if name in div16:
                attrs[(i,)] = [["tt.divisibility", 16]]
    return triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs), target=TARGET)


def vector_ops(compiled) -> int:
    return len(re.findall(r"(?:ld|st)\.global\.v[24]", compiled.asm["ptx"]))


NCHW = dict(ss=1, BLOCK_S=2048, BLOCK_C=1)
NHWC = dict(sc=1, BLOCK_S=32, BLOCK_C=64)
DIV16 = ("S", "C", "sb", "ss", "sc", "chunk_len")


def main() -> int:
    count = 0
    for layout in (NCHW, NHWC):
        for dtype in ("fp32", "bf16", "fp16"):
            for act, res in ((0, False), (1, True), (2, False), (3, True)):
                common = dict(layout, ACT=act, HAS_RES=res, HAS_W=res, HAS_B=not res, INT64=False)
                kernels = [(K.apply_kernel, common), (K.backward_apply_kernel, common),
                           (K.backward_partials_kernel, dict(common, WRITE_DRES=res))]
                if act == 0:
                    kernels.append((K.partial_stats_kernel, dict(layout, INT64=False)))
                for kernel, const in kernels:
                    div16 = tuple(d for d in DIV16 if d not in const)
                    compiled = compile_variant(kernel, const, dtype, div16)
                    if vector_ops(compiled) == 0:
                        print(f"no vector loads/stores: {kernel.fn.__name__} {const} {dtype}")
                        return 1
                    count += 1
    for dtype in ("fp32", "bf16"):
        for act, res in ((0, False), (2, True)):
            compiled = compile_variant(K.rows_backward_kernel, dict(BLOCK_R=16, BLOCK_C=128, ACT=act, HAS_RES=res,
                                                                    WRITE_DRES=res, HAS_W=True, HAS_B=True,
                                                                    INT64=False, sc=1), dtype, ("C", "sb"))
            if vector_ops(compiled) == 0:
                print(f"no vector loads/stores: rows_backward_kernel {dtype}")
                return 1
            count += 1
    for kernel in (K.apply_kernel, K.partial_stats_kernel):   # > 2**31 elements: 64-bit offsets
        extra = dict(ACT=1, HAS_RES=True, HAS_W=True, HAS_B=True) if kernel is K.apply_kernel else {}
        compile_variant(kernel, dict(NHWC, INT64=True, **extra), "bf16", ("C",), i64=("sb", "ss"))
        count += 1
    for kernel in (K.backward_partials_kernel, K.backward_apply_kernel):
        extra = dict(WRITE_DRES=True) if kernel is K.backward_partials_kernel else {}
        compile_variant(kernel, dict(NHWC, ACT=1, HAS_RES=True, HAS_W=True, HAS_B=True, INT64=True, **extra), "bf16",
                        ("C",), i64=("sb", "ss"))
        count += 1
    compile_variant(K.rows_backward_kernel, dict(BLOCK_R=16, BLOCK_C=128, ACT=2, HAS_RES=True, WRITE_DRES=True,
                                                 HAS_W=True, HAS_B=True, INT64=True, sc=1), "bf16", ("C",),
                    i64=("sb",))
    count += 1
    for const in (dict(BLOCK_R=128, BLOCK_K=16), dict(BLOCK_R=2048, BLOCK_K=1)):
        compile_variant(K.merge_stats_kernel, const)
        compile_variant(K.sum_rows_kernel, const)
        count += 2
    for params in ("fp32", "bf16"):
        for flag in (False, True):
            compile_variant(K.finalize_kernel, dict(FROM_M2=flag, BLOCK=1024), param_dtype=params)
            compile_variant(K.running_update_kernel, dict(HAS_NBT=flag, BLOCK=1024), param_dtype=params)
            compile_variant(K.coefficients_kernel, dict(HAS_W=flag, BLOCK_G=8, BLOCK_J=128), param_dtype=params)
            count += 3
    print(f"compiled {count} kernel variants for sm_90")
    return 0


if __name__ == "__main__":
    sys.exit(main())
