"""The CPU overhead benchmark runs end to end in --quick mode and writes its documented JSON schema.

Only the harness is checked (never a timing): the numbers depend on the machine and its load.
"""
import json
import math
from pathlib import Path

import pytest

HARNESS = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu_overhead.py"


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script(HARNESS)


def test_quick_run_writes_every_row_with_environment(bench, tmp_path):
    path = bench.run(["--quick", "--shapes", "2,4,3,3", "--rounds", "2", "--number", "2", "--warmup", "1",
                      "--model-norms", "channel", "--model-rounds", "1", "--model-number", "1",
                      "--model-image-size", "8", "--model-width", "4", "--out", str(tmp_path)],
                     log=lambda line: None)
    assert path.parent == tmp_path and path.name.startswith("cpu_overhead_") and path.suffix == ".json"
    data = json.loads(path.read_text())
    assert data["schema_version"] == bench.SCHEMA_VERSION
    assert "--quick" in data["command"]
    env = data["environment"]
    assert {"cpu_model", "cpu_capability", "torch", "git_hash", "torch_threads",
            "load_average_before", "load_average_after"} <= set(env)
    assert env["torch_threads"] == 1
    rows = data["rows"]
    expected = {(norm, mode) for norm in bench.NORMS for mode in bench.MODES} | {("channel", "model_train_step")}
    assert {(r["norm"], r["mode"]) for r in rows} == expected and len(rows) == len(expected)
    for row in rows:
        for key in ("ours_us_median", "ours_us_best", "torch_us_median", "torch_us_best", "ratio_best",
                    "ratio_median_of_rounds"):
            assert math.isfinite(row[key]) and row[key] > 0, (row, key)
        assert row["ratio_best"] == pytest.approx(row["ours_us_best"] / row["torch_us_best"])
    assert [r["shape"] for r in rows if r["mode"] != "model_train_step"] == [[2, 4, 3, 3]] * 9


def test_pairs_start_with_the_same_parameters(bench):
    for norm in bench.NORMS:
        ours, theirs = bench.make_pair(norm, 16)
        assert ours.weight.equal(theirs.weight) and ours.bias.equal(theirs.bias)
        assert ours.training == theirs.training
    assert bench.groups_for(64) == 8 and bench.groups_for(12) == 6


def test_models_share_weights_and_compute_the_same_function(bench):
    import torch

    ours, theirs = bench.build_models("channel", width=4)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_bad_shape_is_refused_with_its_value(bench):
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--shapes", "2,x,3"])


def test_compare_table_shows_the_median_over_runs(tmp_path, load_script):
    compare = load_script(HARNESS.with_name("compare_cpu_overhead.py"))
    env = {"git_hash": "0" * 40, "load_average_before": [1.0], "load_average_after": [2.0]}

    def write(name, ratios):
        rows = [{"norm": "channel", "mode": "train_fwd", "shape": [2, 4], "ratio_median_of_rounds": r,
                 "ratio_best": r - 0.5, "ours_us_median": 10 * r, "ours_us_best": 1, "torch_us_median": 10.0,
                 "torch_us_best": 1} for r in ratios]
        path = tmp_path / name
        path.write_text(json.dumps({"started_utc": "t", "environment": env, "rows": rows}))
        return path

    before, _ = compare.load([write("b1.json", [3.0]), write("b2.json", [5.0])])
    after, envs = compare.load([write("a1.json", [1.0]), write("a2.json", [1.2]), write("a3.json", [9.0])])
    row = compare.table(before, after).splitlines()[2]
    assert row == "| channel | train_fwd | 2,4 | 4.00 | 1.20 | 0.70 | 12.0 / 10.0 |"
    assert [e["file"] for e in envs] == ["a1.json", "a2.json", "a3.json"]


LAYERS = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_cpu_layers.py"


def test_layer_profile_variants_compute_what_channelnorm_computes(capsys, monkeypatch, load_script):
    """The layer-by-layer profile compares like with like: each variant's output and running
    statistics equal ChannelNorm's (so its timings differ only by the layers), and it runs end to end."""
    import torch

    import channelnorm as cn

    layers = load_script(LAYERS)
    x = torch.randn(3, 4, 5, 5)
    reference = cn.ChannelNorm(4).train()
    expected = reference(x)
    for cls in (layers.FlatGuarded, layers.NativeOnly, layers.ValidatedOnly):
        m = cls(4).train()
        torch.testing.assert_close(m(x), expected)
        torch.testing.assert_close(m.running_mean, reference.running_mean)
        torch.testing.assert_close(m.running_var, reference.running_var)
        assert int(m.num_batches_tracked) == 1
    monkeypatch.setattr("sys.argv", ["profile_cpu_layers.py", "--shape", "2,4,3,3", "--number", "2",
                                     "--repeat", "1"])
    layers.main()
    out = capsys.readouterr().out
    for name in ("torch_module", "flat_guarded", "native", "validated", "channelnorm", "raw ops", "raw native ops",
                 "raw native + guard"):
        assert name in out
