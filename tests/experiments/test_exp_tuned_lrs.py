"""The tuned learning rates are data (``tuned_lrs.json``, keyed by data set), read with checks and
rewritten by ``tune --write-defaults`` for the data set tuned only."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from channelnorm.experiments import cli, tune, tuned_lrs
from channelnorm.experiments.config import ConfigError, ExperimentConfig, quick_config

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = {"synthetic": {"tuned_at_batch": 16, "rates": {"channel": 0.2, "group": 0.05}},
            "cifar10": {"tuned_at_batch": 64, "rates": {"channel": 0.8}}}


@pytest.fixture
def defaults_file(tmp_path, monkeypatch):
    """A defaults file of our own in place of the package's (which a test must never rewrite)."""
    path = tmp_path / "tuned_lrs.json"
    path.write_text(json.dumps(DEFAULTS))
    monkeypatch.setattr(tuned_lrs, "DEFAULTS_FILE", path)
    return path


def test_the_data_set_key_follows_the_config():
    assert tuned_lrs.dataset_key(quick_config()) == "synthetic"
    assert tuned_lrs.dataset_key(quick_config(data_dir="/data/cifar-10-batches-py")) == "cifar10"
    # a config that names its data set itself (a ``data`` field) is keyed by it
    assert tuned_lrs.dataset_key(SimpleNamespace(data="fashion-mnist", data_dir="/x")) == "fashion-mnist"
    assert tuned_lrs.dataset_key(SimpleNamespace(data=None, data_dir=None)) == "synthetic"


def test_rates_scale_linearly_from_the_batch_they_were_tuned_at(defaults_file):
    # oracle: the linear scaling rule by hand, lr(b) = lr(b0) * b / b0
    config = quick_config(sgd_batch=32, norm_batches=(4, 16), coupled_batches=(4, 32), lrs=(("layer", 0.3),))
    assert tuned_lrs.peak_lr("channel", config) == pytest.approx(0.2 * 32 / 16)
    assert tuned_lrs.cell_lr("channel", 4, config) == pytest.approx(0.2 * 32 / 16 * 4 / 32)   # a coupled cell
    assert tuned_lrs.peak_lr("layer", config) == 0.3                                   # --lr wins, unscaled
    assert tuned_lrs.peak_lr("instance", config) == pytest.approx(tuned_lrs.FALLBACK_LR * 32 / 16)
    assert tuned_lrs.is_tuned("channel", config) and tuned_lrs.is_tuned("layer", config)
    assert not tuned_lrs.is_tuned("instance", config)
    # batch renorm trains at channel norm's rate (Ioffe), tuned or given, unless it is given itself
    assert tuned_lrs.peak_lr("batch_renorm", config) == tuned_lrs.peak_lr("channel", config) == pytest.approx(0.4)
    assert tuned_lrs.is_tuned("batch_renorm", config)
    assert tuned_lrs.peak_lr("batch_renorm", config.with_(lrs=(("channel", 0.3),))) == 0.3
    assert tuned_lrs.peak_lr("batch_renorm", config.with_(lrs=(("batch_renorm", 0.07),))) == 0.07
    cifar = config.with_(data_dir="/data/cifar")
    assert tuned_lrs.peak_lr("channel", cifar) == pytest.approx(0.8 * 32 / 64)        # its own data set's entry
    assert not tuned_lrs.is_tuned("group", cifar)
    assert tuned_lrs.peak_lr("group", cifar) == pytest.approx(tuned_lrs.FALLBACK_LR * 32 / 64)
    defaults_file.write_text(json.dumps({"synthetic": DEFAULTS["synthetic"]}))
    assert tuned_lrs.peak_lr("channel", cifar) == pytest.approx(tuned_lrs.FALLBACK_LR * 32 / tuned_lrs.FALLBACK_AT_BATCH)
    assert not tuned_lrs.is_tuned("channel", cifar)


@pytest.mark.parametrize("folder", ["synthetic", "fashion-mnist"])
def test_the_committed_rates_give_the_numbers_the_committed_runs_trained_with(folder):
    # each committed run's rows record the peak rate they trained with: the committed rates, scaled
    # linearly to the row's SGD batch (the Group-Norm-faithful cell trains at 16)
    run = REPO / "docs" / "results" / folder
    rows = json.loads((run / "results.json").read_text())
    config = ExperimentConfig.from_dict(json.loads((run / "config.json").read_text()))
    checked = 0
    for row in rows:
        if row["protocol"] == "decoupled":
            assert tuned_lrs.cell_lr(row["norm"], row["sgd_batch"], config) == pytest.approx(row["peak_lr"]), row
            checked += 1
    assert checked >= len(config.norms)


BAD_FILES = [
    ("a NaN rate", '{"synthetic": {"tuned_at_batch": 32, "rates": {"channel": NaN}}}', "NaN is not a JSON number"),
    ("a negative rate", '{"synthetic": {"tuned_at_batch": 32, "rates": {"channel": -0.1}}}', "finite number > 0"),
    ("a zero rate", '{"synthetic": {"tuned_at_batch": 32, "rates": {"channel": 0}}}', "finite number > 0"),
    ("a rate no float holds", '{"synthetic": {"tuned_at_batch": 32, "rates": {"channel": 1' + "0" * 400 + "}}}",
     "finite number > 0"),
    ("a rate as text", '{"synthetic": {"tuned_at_batch": 32, "rates": {"channel": "0.1"}}}', "finite number > 0"),
    ("a rate as a flag", '{"synthetic": {"tuned_at_batch": 32, "rates": {"channel": true}}}', "finite number > 0"),
    ("an unknown norm", '{"synthetic": {"tuned_at_batch": 32, "rates": {"bogus": 0.1}}}', "bogus"),
    ("an alias", '{"synthetic": {"tuned_at_batch": 32, "rates": {"bn": 0.1}}}', "is an alias"),
    ("no batch", '{"synthetic": {"rates": {"channel": 0.1}}}', "exactly tuned_at_batch and rates"),
    ("a fractional batch", '{"synthetic": {"tuned_at_batch": 3.5, "rates": {}}}', "tuned_at_batch must be an integer"),
    ("an extra field", '{"synthetic": {"tuned_at_batch": 32, "rates": {}, "note": 1}}', "exactly tuned_at_batch"),
    ("rates as a list", '{"synthetic": {"tuned_at_batch": 32, "rates": [0.1]}}', "rates must map norm names"),
    ("a list", "[]", "holds a JSON list where an object belongs"),
    ("cut short", '{"synthetic": {', "is not JSON"),
    ("nested too deeply", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
]


@pytest.mark.parametrize("name, text, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_a_damaged_defaults_file_is_an_error_naming_it(defaults_file, name, text, message):
    defaults_file.write_text(text)
    with pytest.raises(ConfigError, match=message) as error:
        tuned_lrs.peak_lr("channel", quick_config())
    assert str(defaults_file) in str(error.value)


def test_a_defaults_file_that_is_not_utf8_is_an_error_naming_it(defaults_file):
    defaults_file.write_bytes(b"\xff\xfe{}")
    with pytest.raises(ConfigError, match="cannot be read") as error:
        tuned_lrs.read_defaults()
    assert str(defaults_file) in str(error.value)


def _tuning(sgd_batch=32, **chosen):
    return {"sgd_batch": sgd_batch, "norms": {norm: {"chosen_lr": lr} for norm, lr in chosen.items()}}


def test_write_defaults_rewrites_the_data_set_tuned_and_keeps_the_others(defaults_file):
    # the synthetic entry was tuned at batch 16: a tuning at 32 replaces it whole (no rates of two batches)
    written = tuned_lrs.write_defaults(_tuning(32, channel=0.4, layer=0.1), quick_config())
    assert written == defaults_file
    assert json.loads(defaults_file.read_text()) == {
        "synthetic": {"tuned_at_batch": 32, "rates": {"channel": 0.4, "layer": 0.1}},
        "cifar10": DEFAULTS["cifar10"]}
    # a later tuning at the same batch of other norms adds them; a norm tuned again takes its new rate
    tuned_lrs.write_defaults(_tuning(32, frn=0.05, layer=0.2), quick_config())
    assert json.loads(defaults_file.read_text())["synthetic"] == {
        "tuned_at_batch": 32, "rates": {"channel": 0.4, "layer": 0.2, "frn": 0.05}}
    tuned_lrs.write_defaults(_tuning(128, group=0.3), quick_config(data_dir="/data/cifar"))
    assert json.loads(defaults_file.read_text())["cifar10"] == {"tuned_at_batch": 128, "rates": {"group": 0.3}}
    assert json.loads(defaults_file.read_text())["synthetic"]["rates"] == {"channel": 0.4, "layer": 0.2, "frn": 0.05}
    assert not [p for p in defaults_file.parent.iterdir() if p.name.endswith(".tmp")]      # atomic: no leftovers


def test_write_defaults_never_replaces_a_damaged_file(defaults_file):
    defaults_file.write_text('{"cifar10": {"tuned_at_batch": 32, "rates": {"channel": -1}}}')
    with pytest.raises(ConfigError, match="finite number > 0"):
        tuned_lrs.write_defaults(_tuning(32, channel=0.4), quick_config())
    assert "-1" in defaults_file.read_text()


@pytest.mark.parametrize("chosen", [float("nan"), float("inf"), -0.1, 0.0, "0.1", True, 10**400, None])
def test_write_defaults_refuses_a_rate_that_is_not_a_finite_positive_number(defaults_file, chosen):
    before = defaults_file.read_text()
    with pytest.raises(ValueError, match="chosen_lr"):
        tuned_lrs.write_defaults(_tuning(32, channel=chosen), quick_config())
    assert defaults_file.read_text() == before


def test_tune_write_defaults_records_the_chosen_rates_for_its_data_set(defaults_file, tmp_path, monkeypatch, capsys):
    def fake(norm, config, data, lrs, seeds):      # validation error |log2(lr / 0.2)|: 0.2 is the best rate
        import math
        per_lr = [{"lr": lr, "seeds": list(seeds), "val_errors": [abs(math.log2(lr / 0.2))] * len(seeds),
                   "mean": abs(math.log2(lr / 0.2)), "ci95": [abs(math.log2(lr / 0.2))] * 2,
                   "final_train_loss": [0.01] * len(seeds), "diverged": 0} for lr in lrs]
        return {"norm": norm, "per_lr": per_lr, "chosen_lr": tune.choose(per_lr), "train_seconds": 0.0}
    monkeypatch.setattr(tune, "tune_norm", fake)
    assert cli.main(["tune", "--quick", "--norms", "channel,group", "--lrs", "0.1,0.2,0.4", "--workers", "1",
                     "--out", str(tmp_path / "t"), "--no-progress", "--write-defaults"]) == 0
    assert f"defaults: {defaults_file}" in capsys.readouterr().out
    assert json.loads(defaults_file.read_text()) == {
        "synthetic": {"tuned_at_batch": 16, "rates": {"channel": 0.2, "group": 0.2}},    # --quick: SGD batch 16
        "cifar10": DEFAULTS["cifar10"]}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_the_defaults_file_is_shipped_as_package_data():
    import tomllib
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = [REPO / "src" / "channelnorm" / pattern for pattern in package_data["channelnorm"]]
    assert tuned_lrs.DEFAULTS_FILE in shipped and tuned_lrs.DEFAULTS_FILE.is_file()
