"""End to end: ``channelnorm compare --quick`` writes every output file, and each one parses."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from channelnorm.experiments import cli
from channelnorm.experiments.config import quick_config
from channelnorm.experiments.pipeline import OUTPUTS
from channelnorm.experiments.grid import cell_seeds, plan

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_quick_compare_writes_every_output(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["compare", "--quick", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    for name in OUTPUTS:
        assert (out / name).is_file() and f"{name}: {out / name}" in printed

    config = quick_config(out=str(out))
    assert json.loads((out / "config.json").read_text()) == config.to_dict()
    environment = json.loads((out / "environment.json").read_text())
    for key in ("torch", "cpu_count", "git", "cpu_model", "cpu_capability", "torch_threads_per_worker"):
        assert key in environment
    assert environment["command"] == f"channelnorm compare --quick --out {out} --no-progress"
    cells = plan(config)
    assert environment["sweeps"][-1]["executed"] == len(cells)
    assert any(c.frozen_tail for c in cells) and any(c.lr_scale != 1 for c in cells)
    assert any(c.sgd_batch == config.faithful_cell[1] for c in cells)

    for cell in cells:
        for seed in cell_seeds(cell, config):
            entries = [json.loads(line) for line in
                       (out / "runs" / cell.run_id(seed) / "metrics.jsonl").read_text().splitlines()]
            kinds = [e["kind"] for e in entries]
            assert kinds.count("train") >= 2 and kinds.count("curve") >= 1 and kinds[-1] == "final"
            assert entries[-1].keys() == {"kind", "ema_error", "precise_error", "batch_error"}
            assert [e for e in entries if e["kind"] == "train"][-1]["samples"] == config.samples()

    rows = json.loads((out / "results.json").read_text())
    assert {(r["norm"], r["protocol"], r["norm_batch"], r["sgd_batch"]) for r in rows} == (
        {(c.norm, c.protocol, c.norm_batch, c.sgd_batch) for c in cells if not c.is_variant}
        | {(n, "coupled", 16, 16) for n in ("channel", "group")})
    variants = json.loads((out / "variants.json").read_text())
    assert {(r["norm_batch"], r["lr_scale"], r["frozen_tail"]) for r in variants} == {
        (c.norm_batch, c.lr_scale, c.frozen_tail) for c in cells if c.is_variant}
    analysis = json.loads((out / "analysis.json").read_text())
    assert [c["id"] for c in analysis["claims"]] == [c["id"] for c in analysis["preregistered"]["claims"]]
    assert {c["family"] for c in analysis["claims"]} == {"scope", "batch", "convergence"}
    assert all(len(r["errors"]) == 3 and r["ci95"] is not None for r in rows)
    for name in ("error_vs_batch.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_SIGNATURE
    report = (out / "report.md").read_text()
    for section in ("## The pre-registered claims", "### Why per channel?", "### Is channel norm robust",
                    "### Does channel norm converge faster?", "## Protocol (v3", "## Exploratory: the normalization batch",
                    "**Frozen tail**", "**Learning-rate grid**", "**Group-Norm-faithful cell**",
                    "## Exploratory: steps to a target error", "## Exploratory: coupled cells", "## Data and its biases",
                    "## Reproduction"):
        assert section in report
    # no template placeholder left unformatted (an f-string prefix missing on one line of a section)
    assert re.findall(r"\{[a-z_][a-z_0-9\[\]'\"]*\}", report) == []

    # a second invocation trains nothing and rewrites the same results; --reproduction compares verdicts
    # (with a copy of this run: the run directory itself is refused as its own reproduction)
    twin = tmp_path / "twin"
    shutil.copytree(out, twin, ignore=shutil.ignore_patterns("runs", ".lock"))
    with pytest.raises(SystemExit):
        cli.main(["compare", "--quick", "--out", str(out), "--no-progress", "--reproduction", str(out)])
    assert "is --out itself" in capsys.readouterr().err
    assert cli.main(["compare", "--quick", "--out", str(out), "--no-progress", "--reproduction", str(twin)]) == 0
    assert json.loads((out / "results.json").read_text()) == rows
    assert json.loads((out / "environment.json").read_text())["sweeps"][-1]["executed"] == 0
    report = (out / "report.md").read_text()
    assert f"identical seed by seed: {len(rows)}" in report
    reproduced = report.split("## Reproduction on a second CPU code path", 1)[1].split("\n## ", 1)[0]
    claims = len(analysis["claims"])
    assert f"**{claims} of {claims}** do" in reproduced and "| ✗ |" not in reproduced

    # a "reproduction" of other settings is refused, naming the setting
    other = tmp_path / "other"
    shutil.copytree(out, other, ignore=shutil.ignore_patterns("runs", ".lock"))
    settings = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**settings, "epochs": settings["epochs"] + 1}))
    with pytest.raises(SystemExit):
        cli.main(["compare", "--quick", "--out", str(out), "--no-progress", "--reproduction", str(other)])
    assert "epochs" in capsys.readouterr().err


def test_compare_on_cifar_format_data(tmp_path):
    from test_exp_data import _write_cifar
    data_dir = tmp_path / "cifar"
    data_dir.mkdir()
    _write_cifar(data_dir, per_file=20)      # 20 test images: at least one batch of the SGD batch (16)
    out = tmp_path / "run"
    assert cli.main(["compare", "--quick", "--data-dir", str(data_dir), "--norms", "channel,group", "--seeds", "0,1",
                     "--norm-batches", "4", "--coupled-batches", "4", "--workers", "1", "--out", str(out),
                     "--no-progress"]) == 0
    report = (out / "report.md").read_text()
    assert "CIFAR-10" in report and "100 training and 20 test images, 3x32x32" in report
    assert json.loads((out / "config.json").read_text())["grid"] == "custom"


def test_the_console_script_entry_point_shows_help():
    src = Path(__file__).resolve().parents[2] / "src"
    for command in ("compare", "tune"):
        result = subprocess.run([sys.executable, "-m", "channelnorm.experiments.cli", command, "--help"],
                                capture_output=True, text=True, timeout=60, env={"PYTHONPATH": str(src), "PATH": ""},
                                check=True)
        assert "--out" in result.stdout
