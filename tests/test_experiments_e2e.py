"""End to end: ``channelnorm compare --quick`` writes every output file, and each one parses."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from channelnorm.experiments import cli
from channelnorm.experiments.config import CORE_NORMS, quick_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_compare_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["compare", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for name in ("config.json", "environment.json", "results.csv", "results.json", "error_vs_batch.png", "report.md"):
        assert (out / name).is_file() and f"{name}: {out / name}" in printed

    config = json.loads((out / "config.json").read_text())
    assert config == quick_config(out=str(out)).to_dict()
    environment = json.loads((out / "environment.json").read_text())
    assert environment["torch"] and environment["cpu_count"] and "git" in environment
    assert environment["command"] == f"channelnorm compare --quick --out {out} --no-progress"
    assert environment["sweeps"][-1]["executed"] == len(CORE_NORMS) * 2 * 2

    for norm in CORE_NORMS:
        for bs in (2, 8):
            for seed in (0, 1):
                lines = (out / "runs" / f"{norm}-bs{bs}-seed{seed}" / "metrics.jsonl").read_text().splitlines()
                entries = [json.loads(line) for line in lines]
                kinds = [e["kind"] for e in entries]
                assert kinds.count("train") >= 2 and kinds.count("eval") >= 1 and kinds[-1] == "final"
                final = entries[-1]
                assert 0 <= final["eval_error"] <= 1 and 0 <= final["batch_stat_error"] <= 1
                assert final["train_eval_gap"] == pytest.approx(final["batch_stat_error"] - final["eval_error"])
                samples = [e["samples"] for e in entries if e["kind"] == "train"]
                assert samples[-1] == 400                       # same samples for every batch size

    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["norm"], int(r["batch_size"])) for r in rows} == {(n, b) for n in CORE_NORMS for b in (2, 8)}
    results = json.loads((out / "results.json").read_text())
    assert len(results) == len(rows) and all(r["runs"] == 2 for r in results)
    assert (out / "error_vs_batch.png").read_bytes()[:8] == PNG_SIGNATURE
    report = (out / "report.md").read_text()
    for norm in CORE_NORMS:
        assert f"| {norm} |" in report
    for section in ("## 1. Error vs batch size", "## 2. Why per channel", "## 3. Convergence",
                    "## 4. Train/eval discrepancy", "error_vs_batch.png"):
        assert section in report

    # a second invocation trains nothing and rewrites the same results
    assert cli.main(["compare", "--quick", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "results.json").read_text()) == results
    assert json.loads((out / "environment.json").read_text())["sweeps"][-1]["executed"] == 0


def test_compare_on_cifar_format_data(tmp_path):
    from test_experiments_data import _write_cifar
    data_dir = tmp_path / "cifar"
    data_dir.mkdir()
    _write_cifar(data_dir, per_file=6)
    out = tmp_path / "run"
    assert cli.main(["compare", "--quick", "--data-dir", str(data_dir), "--norms", "channel,group", "--batch-sizes",
                     "2,4", "--seeds", "0", "--workers", "1", "--out", str(out), "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "CIFAR-10" in report and "30 training and 6 test images, 3x32x32" in report
    assert json.loads((out / "config.json").read_text())["grid"] == "custom"


def test_the_console_script_entry_point_shows_help():
    src = Path(__file__).resolve().parents[1] / "src"
    result = subprocess.run([sys.executable, "-m", "channelnorm.experiments.cli", "compare", "--help"],
                            capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(src), "PATH": ""},
                            check=True)
    for flag in ("--norms", "--batch-sizes", "--seeds", "--epochs", "--data-dir", "--device", "--out", "--quick",
                 "--full", "--workers"):
        assert flag in result.stdout
