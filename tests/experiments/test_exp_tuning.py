"""The learning-rate tuning: held-out split of the training set only, never the test set."""
import dataclasses
import math
import json
from pathlib import Path

import pytest
import torch

from channelnorm.experiments import tune, tuned_lrs
from channelnorm.experiments.config import ExperimentConfig, quick_config
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


# the committed tuning runs of each data set; one data set's runs tune disjoint norms at the same settings
COMMITTED_TUNINGS = {"synthetic": ("tuning", "tuning/robust"), "fashion-mnist": ("fashion-mnist/tuning",)}
# settings a tuning run may differ in without training anything differently
RUN_ONLY_FIELDS = ("norms", "workers", "out")


@pytest.mark.parametrize("key", sorted(COMMITTED_TUNINGS))
def test_committed_tuned_defaults_match_the_committed_tuning_results(key):
    tunings, settings = [], []
    for folder in COMMITTED_TUNINGS[key]:
        path = REPO / "docs" / "results" / folder / "tuning.json"
        if not path.exists():
            pytest.fail(f"{path} is missing: run `channelnorm tune --out docs/results/{folder} --write-defaults`")
        tuning = json.loads(path.read_text())
        assert tuned_lrs.dataset_key(ExperimentConfig.from_dict(tuning["config"])) == key, folder
        tunings.append(tuning)
        settings.append({k: v for k, v in tuning["config"].items() if k not in RUN_ONLY_FIELDS})
        for norm, result in tuning["norms"].items():
            best = min((p for p in result["per_lr"] if p["diverged"] == 0), key=lambda p: p["mean"])
            assert result["chosen_lr"] == best["lr"], (folder, norm)
    # one data set's rates come from runs of the same settings, each norm tuned once, at one SGD batch
    assert all(s == settings[0] for s in settings), "tuning runs of one data set trained under other settings"
    assert len({t["sgd_batch"] for t in tunings}) == 1
    chosen = {}
    for tuning in tunings:
        assert not set(chosen) & set(tuning["norms"]), "a norm tuned twice"
        chosen.update({norm: r["chosen_lr"] for norm, r in tuning["norms"].items()})
    committed = json.loads((REPO / "src" / "channelnorm" / "experiments" / "tuned_lrs.json").read_text())
    assert committed[key] == {"tuned_at_batch": tunings[0]["sgd_batch"], "rates": chosen}
    assert tuned_lrs.read_defaults()[key].rates == committed[key]["rates"]      # and it passes its own check


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
    return {"lr": lr, "seeds": [100, 101], "val_errors": [mean, mean], "mean": mean, "ci95": [mean, mean],
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


def _previous(monkeypatch, norms=("channel", "group")):
    """A tuning.json (as a dict) of quick_config's settings, from the stand-in training."""
    monkeypatch.setattr(tune, "tune_norm", _fake_training([], best=0.1))
    config = quick_config(norms=norms, workers=1)
    first = tune.run_tuning(config, lrs=(0.05, 0.1, 0.2), workers=1)
    return config, json.loads(json.dumps({**first, "config": config.to_dict(), "environment": {"command": "first"}}))


def _edit(data, path, value):
    target = data
    for key in path[:-1]:
        target = target[key]
    if value is KeyError:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return data


TAMPERED = [
    (("norms", "channel", "per_lr", 0, "mean"), float("nan"), "mean"),
    (("norms", "group", "per_lr", 1, "mean"), 3.0, "mean"),                # no longer the mean of its errors
    (("norms", "channel", "per_lr", 0, "lr"), KeyError, "lr"),
    (("norms", "channel", "per_lr", 0, "lr"), "0.05", "lr"),
    (("norms", "channel", "per_lr", 0, "lr"), True, "lr"),
    (("norms", "channel", "per_lr", 0, "lr"), -0.05, "lr"),
    (("norms", "channel", "per_lr", 2, "lr"), float("inf"), "lr"),
    (("norms", "channel", "per_lr", 2, "lr"), 10**400, "lr"),                # no float holds it
    (("norms", "channel", "per_lr", 2, "mean"), 10**400, "mean"),
    (("norms", "channel", "per_lr", 2, "val_errors"), [10**400, 1], "val_errors"),
    (("norms", "channel", "per_lr", 2, "final_train_loss"), [10**400, 0.1], "final_train_loss"),
    (("norms", "channel", "per_lr", 1, "lr"), 0.05, "twice"),               # a duplicated rate
    (("norms", "channel", "per_lr", 0, "mean"), "1", "mean"),
    (("norms", "channel", "per_lr", 0, "diverged"), KeyError, "diverged"),
    (("norms", "channel", "per_lr", 0, "diverged"), 5, "diverged"),
    (("norms", "channel", "per_lr", 0, "seeds"), [1, 2], "seeds"),
    (("norms", "channel", "per_lr", 0, "val_errors"), [], "val_errors"),
    (("norms", "channel", "per_lr"), 5, "per_lr"),
    (("norms", "channel", "per_lr"), [], "per_lr"),
    (("norms", "channel"), 3, "channel"),
    (("norms", "group", "per_lr"), KeyError, "per_lr"),
    (("norms", "group", "chosen_lr"), float("nan"), "chosen_lr"),
    (("norms", "group", "chosen_lr"), "x", "chosen_lr"),
    (("norms", "group", "chosen_lr"), 7.0, "chosen_lr"),                   # not what its cells choose
    (("norms", "bogus"), {"norm": "bogus", "per_lr": [], "chosen_lr": 0.1}, "bogus"),
    (("norms",), ["channel"], "norms"),
    (("norms",), None, "norms"),
    (("config",), KeyError, "config"),
    (("config", "bogus"), 1, "bogus"),
    (("seeds",), "100", "seeds"),
    (("environments",), "abc", "environments"),
]


@pytest.mark.parametrize("path, value, named", TAMPERED, ids=[f"{'.'.join(map(str, p))}={v!r}" for p, v, _ in TAMPERED])
def test_a_tampered_tuning_is_refused_naming_the_file_and_the_value(monkeypatch, path, value, named):
    config, previous = _previous(monkeypatch)
    _edit(previous, path, value)
    with pytest.raises(ValueError, match=rf"tuning\.json.*{named}"):
        tune.reusable_cells(previous, config.with_(norms=("channel",)), tune.TUNE_SEEDS, where="runs/tuning.json")


def test_a_tuning_of_other_settings_is_replaced_not_checked(monkeypatch):
    config, previous = _previous(monkeypatch)
    _edit(previous, ("norms", "channel", "per_lr", 0, "mean"), float("nan"))
    assert tune.reusable_cells(previous, config.with_(epochs=3.0), tune.TUNE_SEEDS) == {}
    assert tune.reusable_cells(_edit(previous, ("seeds",), [1, 2]), config, tune.TUNE_SEEDS) == {}


def test_a_rate_beyond_the_edge_stays_finite_and_positive():
    assert tune.beyond_edge([_cell(1e308, 1.0), _cell(1.0, 5.0)]) is None    # twice would be inf
    assert tune.beyond_edge([_cell(5e-324, 1.0), _cell(1.0, 5.0)]) is None   # half would be 0


@pytest.mark.parametrize("chosen", [float("nan"), float("inf"), -0.1, 0.0, "0.1", True, 10**400])
def test_the_defaults_refuse_a_rate_that_is_not_a_finite_positive_number(chosen):
    with pytest.raises(ValueError, match="chosen_lr"):
        tuned_lrs.with_tuning({}, "synthetic", {"sgd_batch": 32, "norms": {"channel": {"chosen_lr": chosen}}})


@pytest.mark.parametrize("lrs", ["0.1,0.1", "nan", "inf,0.1", "0,0.1", "-0.1", ",", ""])
def test_tune_refuses_a_learning_rate_grid_with_a_bad_or_repeated_rate(tmp_path, capsys, lrs):
    from channelnorm.experiments import cli
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tune", "--quick", "--lrs", lrs, "--workers", "1", "--out", str(tmp_path / "t")])
    assert exit_.value.code == 2 and "--lrs" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


def test_tune_refuses_a_tampered_tuning_json_in_out_before_training(monkeypatch, tmp_path, capsys):
    from channelnorm.experiments import cli
    monkeypatch.setattr(tune, "tune_norm", lambda *a, **k: pytest.fail("trained despite a tampered tuning.json"))
    out = tmp_path / "t"
    out.mkdir()
    config = cli.config_from_args(cli.build_parser().parse_args(["tune", "--quick", "--workers", "1", "--out", str(out)]),
                                  set(), "runs/tune")
    from channelnorm.experiments.pipeline import _load, resolve_sizes
    config = resolve_sizes(config, _load(config))
    _, previous = _previous(monkeypatch, norms=("channel",))
    previous["config"] = config.to_dict()
    _edit(previous, ("norms", "channel", "per_lr", 0, "mean"), float("nan"))
    (out / "tuning.json").write_text(json.dumps(previous))
    monkeypatch.setattr(tune, "tune_norm", lambda *a, **k: pytest.fail("trained despite a tampered tuning.json"))
    with pytest.raises(SystemExit) as exit_:
        cli.main(["tune", "--quick", "--norms", "channel", "--workers", "1", "--out", str(out)])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and str(out / "tuning.json") in err and "NaN is not a JSON number" in err


def test_tune_refuses_an_out_holding_a_tuning_of_other_settings(tmp_path, capsys):
    from channelnorm.experiments import cli
    out = tmp_path / "tuning"
    args = ["tune", "--quick", "--norms", "channel", "--lrs", "0.05,0.2", "--workers", "1", "--out", str(out),
            "--no-progress"]
    assert cli.main(args) == 0
    before = (out / "tuning.json").read_text()
    with pytest.raises(SystemExit) as stopped:
        cli.main(args + ["--epochs", "3"])
    assert stopped.value.code == 2 and "holds a tuning of other settings (epochs)" in capsys.readouterr().err
    assert (out / "tuning.json").read_text() == before          # nothing trained, nothing overwritten
