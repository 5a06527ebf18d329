"""The learning-rate tuning: held-out split of the training set only, never the test set."""
import dataclasses
import math
import json
from pathlib import Path

import pytest
import torch

from channelnorm.experiments import tune
from channelnorm.experiments.config import quick_config
from channelnorm.experiments.data import load_dataset, validation_split
from channelnorm.experiments.synthetic import make_images

REPO = Path(__file__).resolve().parents[2]


def test_validation_split_holds_out_the_end_of_the_training_set_and_drops_the_test_set():
    data = load_dataset(quick_config(train_size=200, test_size=100))
    split = validation_split(data, 50)
    assert torch.equal(split.train_x, data.train_x[:150]) and torch.equal(split.test_x, data.train_x[150:])
    assert torch.equal(split.test_y, data.train_y[150:])
    assert not any(torch.equal(t, data.test_x) for t in (split.train_x, split.test_x))
    with pytest.raises(ValueError, match="val_size must be in"):
        validation_split(data, 200)


def test_tuning_never_reads_the_test_set(monkeypatch):
    """Poison the test set (NaN images, wrong labels): tuning gives bit-identical results."""
    config = quick_config(norms=("channel",), workers=1, epochs=1.0)
    clean = tune.run_tuning(config, lrs=(0.05, 0.2), seeds=(100,), workers=1)
    real_load = tune.load_dataset

    def poisoned(cfg):
        data = real_load(cfg)
        return dataclasses.replace(data, test_x=torch.full_like(data.test_x, float("nan")),
                                   test_y=(data.test_y + 1) % 10)

    monkeypatch.setattr(tune, "load_dataset", poisoned)
    dirty = tune.run_tuning(config, lrs=(0.05, 0.2), seeds=(100,), workers=1)
    strip = lambda t: {n: [{k: v for k, v in p.items()} for p in r["per_lr"]] for n, r in t["norms"].items()}
    assert strip(clean) == strip(dirty)
    assert clean["norms"]["channel"]["chosen_lr"] == dirty["norms"]["channel"]["chosen_lr"]


def test_committed_tuned_defaults_match_the_committed_tuning_results():
    path = REPO / "docs" / "results" / "tuning" / "tuning.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `channelnorm tune --out docs/results/tuning --write-defaults`")
    tuning = json.loads(path.read_text())
    generated = tune.render_defaults(tuning)
    assert (REPO / "src" / "channelnorm" / "experiments" / "tuned_lrs.py").read_text() == generated
    for norm, result in tuning["norms"].items():
        best = min((p for p in result["per_lr"] if p["diverged"] == 0), key=lambda p: p["mean"])
        assert result["chosen_lr"] == best["lr"]


def test_colour_and_contrast_variation_do_what_they_say():
    # no variation, no noise: every pixel is the fixed background (0.25) or foreground (0.75) grey
    x, _ = make_images(50, 12, seed=1, noise=0.0, colour_variation=0.0, contrast_variation=0.0)
    assert set(torch.unique(x).tolist()) <= {0.25, 0.75}
    # contrast: each image is the unvaried one scaled around its mean by a factor in [1 - c, 1]
    base, _ = make_images(50, 12, seed=1, noise=0.0, colour_variation=0.5, contrast_variation=0.0)
    varied, _ = make_images(50, 12, seed=1, noise=0.0, colour_variation=0.5, contrast_variation=0.4)
    centred = lambda t: t - t.mean(dim=(1, 2, 3), keepdim=True)
    ratio = centred(varied).flatten(1).norm(dim=1) / centred(base).flatten(1).norm(dim=1)
    assert float(ratio.min()) >= 0.6 - 1e-4 and float(ratio.max()) <= 1.0 + 1e-4 and float(ratio.std()) > 0.05
    with pytest.raises(ValueError, match="contrast_variation must be in"):
        make_images(5, 12, seed=0, contrast_variation=1.0)


def _cell(lr, mean, diverged=0):
    return {"lr": lr, "seeds": [100, 101], "val_errors": [mean, mean], "mean": mean, "ci95": None,
            "final_train_loss": [0.01, 0.01], "diverged": diverged}


def test_a_choice_at_an_edge_of_the_rates_tried_is_followed_beyond_it():
    assert tune.beyond_edge([_cell(0.1, 5.0), _cell(0.2, 4.0)]) == 0.4
    assert tune.beyond_edge([_cell(0.1, 3.0), _cell(0.2, 4.0)]) == 0.05
    assert tune.beyond_edge([_cell(0.1, 5.0), _cell(0.2, 3.0), _cell(0.4, 4.0)]) is None   # bracketed
    # the best usable rate sits below a diverged one: that edge is explored already
    assert tune.beyond_edge([_cell(0.1, 5.0), _cell(0.2, 3.0), _cell(0.4, 1.0, diverged=1)]) is None
    assert tune.choose([_cell(0.1, 5.0), _cell(0.2, 3.0), _cell(0.4, 1.0, diverged=1)]) == 0.2
    assert tune.beyond_edge([_cell(0.1, 5.0)]) is None                                     # one rate: no edge


def _fake_training(calls, best=0.4):
    """tune_norm stand-in: validation error |log2(lr / best)|, so the best rate is ``best``."""
    def fake(norm, config, data, lrs, seeds):
        calls.append((norm, tuple(lrs)))
        per_lr = [_cell(lr, abs(math.log2(lr / best))) for lr in lrs]
        return {"norm": norm, "per_lr": per_lr, "chosen_lr": tune.choose(per_lr), "train_seconds": 0.0}
    return fake


def test_tuning_extends_the_grid_at_most_edge_steps_times(monkeypatch):
    calls = []
    monkeypatch.setattr(tune, "tune_norm", _fake_training(calls, best=0.4))
    config = quick_config(norms=("channel",), workers=1)
    result = tune.run_tuning(config, lrs=(0.05, 0.1), workers=1)["norms"]["channel"]
    assert calls == [("channel", (0.05, 0.1)), ("channel", (0.2,)), ("channel", (0.4,))]
    assert [p["lr"] for p in result["per_lr"]] == [0.05, 0.1, 0.2, 0.4] and result["chosen_lr"] == 0.4
    calls.clear()
    monkeypatch.setattr(tune, "tune_norm", _fake_training(calls, best=1.6))    # beyond two steps: stops there
    result = tune.run_tuning(config, lrs=(0.05, 0.1), workers=1)["norms"]["channel"]
    assert len(calls) == 1 + tune.EDGE_STEPS and result["chosen_lr"] == 0.4


def test_a_rerun_reuses_cells_of_the_same_settings_and_keeps_other_norms(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(tune, "tune_norm", _fake_training(calls, best=0.1))
    config = quick_config(norms=("channel", "group"), workers=1)
    first = tune.run_tuning(config, lrs=(0.05, 0.1, 0.2), workers=1)
    previous = {**first, "config": config.to_dict(), "environment": {"command": "first"}}
    calls.clear()
    again = tune.run_tuning(config.with_(norms=("channel",)), lrs=(0.05, 0.1, 0.2, 0.4), workers=1, previous=previous)
    assert calls == [("channel", (0.4,))]                       # only the new rate trains
    assert again["norms"]["group"] == first["norms"]["group"]   # a norm not tuned now is kept
    assert again["norms"]["channel"]["reused_lrs"] == [0.05, 0.1, 0.2]
    assert again["lr_grid"] == [0.05, 0.1, 0.2, 0.4]
    tune.write_tuning(again, config, {"command": "second"}, tmp_path, previous)
    written = json.loads((tmp_path / "tuning.json").read_text())
    assert [e["command"] for e in written["environments"]] == ["first", "second"]
    report = (tmp_path / "report.md").read_text()
    assert "`first`, then `second`" in report and "| group | " in report and " — " in report
    # other settings (another number of epochs): nothing is reused
    calls.clear()
    tune.run_tuning(config.with_(norms=("channel",), epochs=3.0), lrs=(0.05, 0.1, 0.2), workers=1, previous=previous)
    assert calls == [("channel", (0.05, 0.1, 0.2))]


def test_the_analysis_thresholds_do_not_stop_a_reuse(monkeypatch):
    calls = []
    monkeypatch.setattr(tune, "tune_norm", _fake_training(calls, best=0.1))
    config = quick_config(norms=("channel",), workers=1)
    first = tune.run_tuning(config, lrs=(0.05, 0.1, 0.2), workers=1)
    previous = {**first, "config": config.with_(converged_loss=0.5, target_error=10.0).to_dict()}
    calls.clear()
    tune.run_tuning(config, lrs=(0.05, 0.1, 0.2), workers=1, previous=previous)
    assert calls == []
