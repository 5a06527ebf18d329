"""Aggregation over seeds, the learning-rate schedule, error measurement and the generated reading."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import channelnorm as cn
from channelnorm.experiments.config import ExperimentConfig
from channelnorm.experiments.report import write_report
from channelnorm.experiments.results import aggregate, mean_std, write_results
from channelnorm.experiments.train import error_rate, learning_rate


def record(norm, bs, seed, err, bstat=None, diverged=False, loss=1.0, target=None):
    bstat = err if bstat is None else bstat
    return {"run_id": f"{norm}-bs{bs}-seed{seed}", "norm": norm, "batch_size": bs, "seed": seed,
            "eval_error": err, "batch_stat_error": bstat, "train_eval_gap": bstat - err, "diverged": diverged,
            "loss_at_quarter": loss, "final_train_loss": loss / 2, "seconds": 1.0 + seed,
            "samples_to_target": target, "planned_samples": 1024}


def test_mean_std_matches_numpy():
    values = [0.31, 0.27, 0.44, 0.29]
    mean, std, n = mean_std(values + [None, float("nan")])
    assert n == 4
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    assert mean_std([0.5]) == (0.5, None, 1)
    assert mean_std([]) == (None, None, 0)


def test_aggregate_against_numpy_on_hand_made_records():
    errors = {2: [0.40, 0.46, 0.52], 32: [0.20, 0.22, 0.21]}
    records = [record("channel", bs, s, e, bstat=e + 0.1 * s, target=(100 * (s + 1) if s else None))
               for bs, errs in errors.items() for s, e in enumerate(errs)]
    records.append(record("none", 2, 0, 0.9, diverged=True))
    records.append(record("none", 2, 1, 0.5))
    rows = {(r["norm"], r["batch_size"]): r for r in aggregate(records)}
    for bs, errs in errors.items():
        row = rows[("channel", bs)]
        assert row["runs"] == 3 and row["diverged"] == 0 and row["seeds"] == [0, 1, 2]
        assert row["eval_error_mean"] == pytest.approx(np.mean(errs))
        assert row["eval_error_std"] == pytest.approx(np.std(errs, ddof=1))
        gaps = [0.1 * s for s in range(3)]
        assert row["train_eval_gap_mean"] == pytest.approx(np.mean(gaps))
        assert row["reached_target"] == 2 and row["samples_to_target_mean"] == pytest.approx(250)
        assert row["steps_to_target_mean"] == pytest.approx(250 / bs)
    none = rows[("none", 2)]
    assert none["runs"] == 2 and none["diverged"] == 1
    assert none["eval_error_mean"] == pytest.approx(0.5) and none["eval_error_std"] is None


def test_results_files_parse_back(tmp_path):
    rows = aggregate([record("group", 8, s, 0.3 + 0.01 * s) for s in range(2)])
    write_results(rows, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text()) == rows
    with open(tmp_path / "results.csv") as handle:
        parsed = list(csv.DictReader(handle))
    assert len(parsed) == 1 and parsed[0]["norm"] == "group" and parsed[0]["seeds"] == "0;1"
    assert float(parsed[0]["eval_error_mean"]) == pytest.approx(0.305)


def test_learning_rate_is_scaled_linearly_with_warmup_then_cosine():
    config = ExperimentConfig(base_lr=0.2, reference_batch=32, warmup_fraction=0.1)
    total = 12800
    for bs in (2, 8, 32):
        peak = 0.2 * bs / 32
        lrs = [learning_rate(config, bs, s, total) for s in range(0, total, bs)]
        assert max(lrs) == pytest.approx(peak)
        assert lrs[0] == pytest.approx(peak * bs / 1280)              # first step of the warm-up
        assert np.all(np.diff(lrs[: 1280 // bs]) > 0)                 # rising during warm-up
        assert np.all(np.diff(lrs[1280 // bs:]) <= 1e-12)             # then never rising
        assert lrs[-1] < 0.01 * peak
        halfway = learning_rate(config, bs, 1280 + (total - 1280) // 2, total)
        assert halfway == pytest.approx(peak / 2, rel=1e-6)          # cosine: half the peak at mid-decay


@pytest.mark.parametrize("bs", [2, 8, 32])
def test_learning_rate_never_exceeds_the_peak_when_the_warmup_does_not_divide_by_the_batch(bs):
    config = ExperimentConfig(base_lr=0.2, reference_batch=32, warmup_fraction=0.1)
    total = 12000                                                 # warm-up 1200 samples: not a multiple of 32
    lrs = [learning_rate(config, bs, s, total) for s in range(0, total, bs)]
    assert max(lrs) == 0.2 * bs / 32


def test_error_rate_counts_wrong_and_non_finite_predictions_and_keeps_running_stats():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = cn.ChannelNorm(2)

        def forward(self, x):
            self.norm(x[:, :2, None, None].float())     # touches running statistics in train mode
            return x
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [float("nan"), 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    model = Fixed()
    before = model.norm.running_mean.clone()
    assert error_rate(model, logits, labels, 2, "cpu", batch_statistics=False) == pytest.approx(0.5)
    assert error_rate(model, logits, labels, 2, "cpu", batch_statistics=True) == pytest.approx(0.5)
    assert torch.equal(model.norm.running_mean, before) and int(model.norm.num_batches_tracked) == 0
    # batch statistics use whole batches only: 3 of 4 images with batch 3
    assert error_rate(model, logits, labels, 3, "cpu", batch_statistics=True) == pytest.approx(1 / 3)


def _rows(channel_small, group_small=0.25):
    records = []
    for seed in range(3):
        jitter = 0.002 * seed
        records += [record("channel", 32, seed, 0.20 + jitter, loss=1.0), record("channel", 2, seed, channel_small + jitter,
                                                                                  bstat=channel_small + 0.1, loss=1.1),
                    record("group", 32, seed, 0.25 + jitter, loss=1.5), record("group", 2, seed, group_small + jitter, loss=1.6),
                    record("none", 32, seed, 0.5 + jitter, loss=2.0), record("none", 2, seed, 0.5 + jitter, loss=2.0)]
    return aggregate(records)


def test_report_reading_follows_the_numbers():
    config = ExperimentConfig(norms=("channel", "group", "none"), batch_sizes=(2, 32))
    env = {"command": "channelnorm compare", "sweep": {"wall_seconds": 12.0, "executed": 18}}
    degraded = write_report(_rows(channel_small=0.45), config, env, "test data", "plot.png")
    assert "contradicts the seed's claim that channel normalization is robust" in degraded
    assert "Largest rise in error: **channel** (+25.0 points)" in degraded
    assert "**channel** at batch 2: 55.0 error with the statistics of each test batch vs 45.2" in degraded
    assert "this supports the seed's claim of faster convergence at batch 32" in degraded
    flat = write_report(_rows(channel_small=0.20), config, env, "test data", "plot.png")
    assert "contradicts the seed's claim that channel normalization is robust" not in flat
    assert "within seed noise" in flat
    for text in (degraded, flat):
        assert "![error vs batch size](plot.png)" in text
        assert all(f"| {norm} |" in text for norm in config.norms)
        assert not math.isnan(12.0) and "12 s" in text


def test_report_reading_ignores_differences_within_seed_noise():
    # at batch 32: layer's error is 2.4 points below no-norm's, but no-norm's seeds spread by ±12.5
    # points, and instance's loss after a quarter is 0.16 below no-norm's with a ±0.17 spread; channel
    # beats no-norm by far more than the noise in both. Only channel may be read as better / faster.
    none_err, layer_err = [0.779 - 0.125, 0.779, 0.779 + 0.125], [0.744, 0.755, 0.766]
    channel_err, channel_loss = [0.118, 0.121, 0.124], [1.35, 1.52, 1.69]
    instance_loss, none_loss = [1.93, 2.10, 2.27], [2.22, 2.26, 2.30]
    records = []
    for bs in (2, 32):
        for s in range(3):
            records += [record("channel", bs, s, channel_err[s], loss=channel_loss[s]),
                        record("layer", bs, s, layer_err[s], loss=2.29),
                        record("instance", bs, s, 0.168, loss=instance_loss[s]),
                        record("none", bs, s, none_err[s], loss=none_loss[s])]
    config = ExperimentConfig(norms=("channel", "layer", "instance", "none"), batch_sizes=(2, 32))
    env = {"command": "channelnorm compare", "sweep": {"wall_seconds": 1.0, "executed": 24}}
    text = write_report(aggregate(records), config, env, "test data", "plot.png")
    assert "better — channel, instance; worse — nothing." in text          # layer: within noise
    assert "lower training loss than no normalization (2.260): channel; higher: nothing" in text
    assert "this supports the seed's claim of faster convergence at batch 32" in text
    # channel vs instance at batch 32: 4.7 points apart, but with these spreads a real difference
    assert "Per-channel statistics over (N,H,W) are the best scope at batch 32, 4.7 points ahead of instance." in text


def test_report_calls_a_lead_within_noise_a_tie():
    records = []
    for bs in (2, 32):
        for s, (c, g) in enumerate([(0.10, 0.05), (0.12, 0.12), (0.14, 0.19)]):
            records += [record("channel", bs, s, c), record("group", bs, s, g + 0.01)]
    config = ExperimentConfig(norms=("channel", "group"), batch_sizes=(2, 32))
    env = {"command": "channelnorm compare", "sweep": {"wall_seconds": 1.0, "executed": 12}}
    text = write_report(aggregate(records), config, env, "test data", "plot.png")
    assert "are the best scope" not in text
    assert "a tie within seed noise" in text


def test_report_setup_counts_steps_from_the_runs_when_train_size_is_all():
    # --data-dir without --train-size (train_size None: all of CIFAR-10) must not print "0 steps"
    records = [dict(record("channel", bs, s, 0.3), planned_samples=75000) for bs in (2, 32) for s in range(2)]
    config = ExperimentConfig(norms=("channel",), batch_sizes=(2, 32), seeds=(0, 1), train_size=None,
                              test_size=None, data_dir="cifar-10-batches-py")
    env = {"command": "channelnorm compare", "sweep": {"wall_seconds": 1.0, "executed": 4}}
    text = write_report(aggregate(records), config, env, "CIFAR-10", "plot.png")
    assert "batch 2: 37500 steps" in text and "batch 32: 2343 steps" in text
    assert " 0 steps" not in text
    assert "Every run sees the same 75000 training samples" in text


def test_report_does_not_call_a_single_seed_change_a_contradiction():
    # one seed per point: a 25-point rise has no measured noise to beat, so no verdict either way
    records = [record("channel", 32, 0, 0.20), record("channel", 2, 0, 0.45),
               record("group", 32, 0, 0.30), record("group", 2, 0, 0.20)]
    config = ExperimentConfig(norms=("channel", "group"), batch_sizes=(2, 32), seeds=(0,))
    env = {"command": "channelnorm compare", "sweep": {"wall_seconds": 1.0, "executed": 4}}
    text = write_report(aggregate(records), config, env, "test data", "plot.png")
    assert "contradicts the seed's claim that channel normalization is robust" not in text
    assert "neither confirms nor contradicts the robustness claim" in text
    assert "+25.0 (not settled: one seed, noise unmeasured)" in text
    assert "did not move beyond seed noise" not in text and "their error still moved" not in text
