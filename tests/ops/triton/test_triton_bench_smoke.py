"""The kernel benchmark harness runs end to end (tiny shapes; on CPU under the Triton interpreter)."""
import json
from pathlib import Path

import pytest

pytest.importorskip("triton")
HARNESS = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_kernels.py"


def test_benchmark_harness_smoke_run(tmp_path, load_script):
    bench = load_script(HARNESS)
    stem = bench.main(["--smoke", "--out", str(tmp_path), "--dtypes", "bf16", "--passes", "fwd", "fwdbwd"])
    data = json.loads(Path(f"{stem}.json").read_text())
    assert {"device", "torch", "triton", "git_hash"} <= set(data["environment"])
    assert len(data["rows"]) == 2 * 2 * 2 + 2 * 2      # (NCHW, NHWC) + (N, C) shapes, 2 norms, 2 passes
    assert all(row["triton_ms"] > 0 and row["fraction_of_copy_bw"] > 0 for row in data["rows"])
    assert "Rows missing a target" in Path(f"{stem}.md").read_text()
