"""The files a run reads back: one strict JSON reader for all of them, values checked against what a
run can produce, one command per run directory, and a clear error (exit 2, no traceback) for every
damaged or impossible input."""
import copy
import json
import os

import pytest

from channelnorm.experiments import cli, tune
from channelnorm.experiments import sweep as sweep_module
from channelnorm.experiments.analysis import analyse, precise_recovery, Rows
from channelnorm.experiments.config import ConfigError, ExperimentConfig, quick_config
from channelnorm.experiments.pipeline import _previous_sweeps, reproduction
from channelnorm.experiments.results import build_rows, read_finished_run, rows_problem
from channelnorm.experiments.rundir import (KIND_FILE, check_resume, finished_record, read_record, record_path,
                                            run_dir, run_kind)
from channelnorm.experiments.stats import mean_ci, paired_by_seed
from channelnorm.experiments.storage import NotJsonError, RunDirectoryError, read_json
from channelnorm.experiments.grid import Cell, plan

# ---- fakes: these tests are about files, not numbers (the run directory tests' fakes) ----
from test_exp_rundir import fake_evaluate_members, fake_train_members  # noqa: E402


@pytest.fixture
def trained(monkeypatch):
    """Training and evaluation of compare (and tune) replaced by fakes; lists the cells trained."""
    cells = []

    def train(plan, *args, **kwargs):
        cells.append((plan.norm, plan.norm_batch, plan.sgd_batch, tuple(m.seed for m in plan.members)))
        return fake_train_members(plan, *args, **kwargs)

    def tune_norm(norm, config, data, lrs, seeds):
        cells.append((norm, tuple(lrs)))
        per_lr = [{"lr": lr, "seeds": list(seeds), "val_errors": [10.0] * len(seeds), "mean": 10.0,
                   "ci95": [10.0, 10.0] if len(seeds) > 1 else None, "final_train_loss": [0.01] * len(seeds),
                   "diverged": 0} for lr in lrs]
        return {"norm": norm, "per_lr": per_lr, "chosen_lr": tune.choose(per_lr), "train_seconds": 0.0}

    monkeypatch.setattr(sweep_module, "train_members", train)
    monkeypatch.setattr(sweep_module, "evaluate_members", fake_evaluate_members)
    monkeypatch.setattr(tune, "tune_norm", tune_norm)
    return cells


def compare_args(out, *extra):
    return ["compare", "--quick", "--norms", "channel", "--norm-batches", "16", "--coupled-batches", "16",
            "--seeds", "0", "--workers", "1", "--out", str(out), "--no-progress", *extra]


def tune_args(out, *extra):
    return ["tune", "--quick", "--norms", "channel", "--workers", "1", "--out", str(out), "--no-progress", *extra]


def refused(argv, capsys):
    """(exit code, stderr) of a CLI call that must stop with a usage error, never a traceback."""
    with pytest.raises(SystemExit) as stopped:
        cli.main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return stopped.value.code, err


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
            and p.name != ".lock"}


# ---- item 5: compare and tune never write into each other's run directory ----

def test_compare_refuses_the_run_directory_of_a_tune_run(tmp_path, trained, capsys):
    out = tmp_path / "shared"
    assert cli.main(tune_args(out)) == 0
    before, trained_before = snapshot(out), len(trained)
    code, err = refused(compare_args(out), capsys)
    assert code == 2 and f"--out '{out}' holds a tune run" in err and "channelnorm compare never writes into it" in err
    assert snapshot(out) == before and len(trained) == trained_before        # report.md untouched, nothing trained
    assert json.loads((out / KIND_FILE).read_text()) == {"kind": "tune"}


def test_tune_refuses_the_run_directory_of_a_compare_run(tmp_path, trained, capsys):
    out = tmp_path / "shared"
    assert cli.main(compare_args(out)) == 0
    before, trained_before = snapshot(out), len(trained)
    code, err = refused(tune_args(out), capsys)
    assert code == 2 and f"--out '{out}' holds a compare run" in err and "channelnorm tune never writes into it" in err
    assert snapshot(out) == before and len(trained) == trained_before
    assert json.loads((out / KIND_FILE).read_text()) == {"kind": "compare"}


@pytest.mark.parametrize("files, kind", [
    ((), None), (("tuning.json",), "tune"), (("config.json",), "compare"), (("results.json",), "compare"),
    (("runs/",), "compare"), (("report.md",), None),
])
def test_a_run_directory_written_before_run_kind_json_is_told_by_its_files(tmp_path, files, kind):
    for name in files:
        (tmp_path / name).mkdir() if name.endswith("/") else (tmp_path / name).write_text("{}")
    assert run_kind(tmp_path) == kind


@pytest.mark.parametrize("content, message", [
    (None, "holds the files of both a compare run (config.json) and a tune run (tuning.json)"),
    ('{"kind": "plot"}', 'must be {"kind": "compare"} or {"kind": "tune"}'),
    ('["compare"]', "holds a JSON list where an object belongs"),
])
def test_an_ambiguous_or_damaged_run_kind_is_an_error(tmp_path, content, message):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "tuning.json").write_text("{}")
    if content is not None:
        (tmp_path / KIND_FILE).write_text(content)
    with pytest.raises(RunDirectoryError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("{", r"\{").replace("}", r"\}")):
        run_kind(tmp_path)


def test_verdicts_name_a_tune_run_as_such(tmp_path, trained, capsys):
    assert cli.main(compare_args(tmp_path / "a")) == 0
    assert cli.main(tune_args(tmp_path / "t")) == 0
    code, err = refused(["verdicts", str(tmp_path / "a"), str(tmp_path / "t")], capsys)
    assert code == 2 and f"'{tmp_path / 't'}' holds no finished compare run: it holds a tune run" in err


# ---- item 6: values read back are checked against what a run can produce ----

CONFIG = ExperimentConfig(norms=("channel", "group", "none"), norm_batches=(2, 32), seeds=(0, 1, 2))


def record(cell, seed, ema, precise):
    return {"run_id": cell.run_id(seed), "norm": cell.norm, "protocol": cell.protocol, "norm_batch": cell.norm_batch,
            "sgd_batch": cell.sgd_batch, "seed": seed, "errors": {"ema": ema, "precise": precise, "batch": ema},
            "converged": True, "final_train_loss": 0.01, "diverged": False, "peak_lr": 0.1, "steps": 1000,
            "samples": 1000 * cell.sgd_batch, "steps_to_target": 1000, "curve": [[500, 10.0], [1000, ema]]}


def grid_rows(config=CONFIG, ema=(3.0, 4.0, 8.0), precise=(2.5, 3.0, 3.5)):
    """Rows of every planned cell: seed i has EMA error ema[i] and precise error precise[i]."""
    found = {cell.cell_id: [record(cell, s, ema[i], precise[i]) for i, s in enumerate(config.seeds)]
             for cell in plan(config)}
    return build_rows(found, config)


def write_run(folder, config, rows):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    (folder / "results.json").write_text(json.dumps(rows))
    (folder / "environment.json").write_text(json.dumps({"cpu_capability": "AVX2"}))


def edit_first(**changes):
    return lambda rows: [{**rows[0], **changes}] + rows[1:]


IMPOSSIBLE_ROWS = [
    ("negative errors", edit_first(errors=[-1.0, -2.0, -3.0], mean=-2.0), "errors must be 3 finite numbers in [0, 100]"),
    ("errors above 100 %", edit_first(errors=[101.0, 3.0, 5.0], mean=36.333333333333336), "in [0, 100]"),
    ("errors summing to zero", edit_first(errors=[1e308, -1e308, 0.0], mean=0.0), "in [0, 100]"),
    ("another seed", edit_first(seeds=[0, 1, 5]), "seeds must be the run's seeds [0, 1, 2]"),
    ("a seed twice", edit_first(seeds=[0, 0, 1]), "seeds must be the run's seeds"),
    ("a seed missing", edit_first(seeds=[0, 1]), "seeds must be the run's seeds"),
    ("seeds as text", edit_first(seeds=["0", "1", "2"]), "seeds must be the run's seeds"),
    ("no seeds", lambda rows: [{k: v for k, v in rows[0].items() if k != "seeds"}] + rows[1:], "seeds"),
    ("a list as a key", edit_first(norm_batch=[32]), "must be strings and integers"),
    ("an object as a key", edit_first(norm={"a": 1}), "must be strings and integers"),
    ("an interval not of its errors", edit_first(ci95=[0.0, 100.0]), "ci95 [0.0, 100.0] is not the 95 % interval"),
    ("converged as text", edit_first(converged="yes"), "converged must be true or false"),
    ("a zero peak rate", edit_first(peak_lr=0), "peak_lr"),
    ("samples not steps x batch", edit_first(samples=7), "samples = steps x SGD batch"),
    ("a negative loss", edit_first(final_train_loss=[-0.5, 0.01, 0.01]), "final_train_loss"),
    ("a seed without a loss that did not diverge", edit_first(final_train_loss=[None, 0.01, 0.01]),
     "a seed without a loss that did not diverge"),
    ("steps to target beyond the run", edit_first(steps_to_target=[10**6, None, None]), "steps_to_target"),
    ("an unknown sharing", edit_first(runs_shared_with="coupled"), "runs_shared_with"),
]


@pytest.mark.parametrize("name, edit, message", IMPOSSIBLE_ROWS, ids=[r[0] for r in IMPOSSIBLE_ROWS])
def test_results_rows_a_run_cannot_produce_are_refused_naming_the_run(tmp_path, name, edit, message):
    rows = grid_rows()
    assert rows_problem(rows, CONFIG) is None
    write_run(tmp_path / "run", CONFIG, edit(copy.deepcopy(rows)))
    with pytest.raises(ConfigError) as error:
        read_finished_run(tmp_path / "run", "channelnorm verdicts")
    assert f"'{tmp_path / 'run'}' holds no finished compare run" in str(error.value) and message in str(error.value)


@pytest.mark.parametrize("name, edit, message", [
    ("a list as a row key", edit_first(norm_batch=[32]), "must be strings and integers"),
    ("errors 1e308, -1e308, 0", edit_first(errors=[1e308, -1e308, 0.0], mean=0.0), "in [0, 100]"),
])
def test_verdicts_refuse_impossible_rows_with_a_clear_error(tmp_path, capsys, name, edit, message):
    rows = grid_rows()
    write_run(tmp_path / "a", CONFIG, rows)
    write_run(tmp_path / "b", CONFIG, edit(copy.deepcopy(rows)))
    code, err = refused(["verdicts", str(tmp_path / "a"), str(tmp_path / "b")], capsys)
    assert code == 2 and str(tmp_path / "b") in err and message in err


def _row(rows, protocol, norm_batch, evaluation):
    return next(r for r in rows if (r["norm"], r["protocol"], r["norm_batch"], r["eval"])
                == ("channel", protocol, norm_batch, evaluation))


def test_ema_minus_precise_is_paired_by_seed_not_by_position():
    # seed 0: 3.0 - 2.5, seed 1: 4.0 - 3.0, seed 2: 8.0 - 3.5 -> 0.5, 1.0, 4.5 (oracle: by hand)
    rows = grid_rows()
    want, want_ci = mean_ci([0.5, 1.0, 4.5])
    shuffled = copy.deepcopy(rows)
    precise = _row(shuffled, "decoupled", 2, "precise")
    order = [2, 0, 1]                                    # the same seeds' values, listed in another order
    for key in ("seeds", "errors", "final_train_loss", "curve", "steps_to_target"):
        precise[key] = [precise[key][i] for i in order]
    assert rows_problem(shuffled, CONFIG) is None       # a legitimate row: every value still has its seed
    for candidate in (rows, shuffled):
        entry = next(p for p in precise_recovery(Rows(candidate), 32) if p["norm_batch"] == 2)
        assert entry["recovered"] == pytest.approx(want) and entry["recovered_ci95"] == pytest.approx(list(want_ci))


def test_rows_whose_seeds_differ_are_never_paired():
    with pytest.raises(ValueError, match="seeds differ"):
        paired_by_seed([0, 1, 2], [1.0, 2.0, 3.0], [0, 1, 3], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="seeds differ"):
        paired_by_seed([0, 0, 1], [1.0, 2.0, 3.0], [0, 1, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="one value per seed"):
        paired_by_seed([0, 1], [1.0], [0, 1], [1.0, 2.0])
    assert paired_by_seed([2, 0], [20.0, 0.0], [0, 2], [1.0, 21.0]) == [(20.0, 21.0), (0.0, 1.0)]
    rows = grid_rows()
    _row(rows, "decoupled", 2, "precise")["seeds"] = [0, 1, 5]
    with pytest.raises(ValueError, match="seeds differ"):
        analyse(rows, CONFIG)


def test_a_rerun_with_the_same_numbers_in_another_seed_order_is_identical_seed_by_seed():
    here = grid_rows()
    there = copy.deepcopy(here)
    for row in there:
        for key in ("seeds", "errors", "final_train_loss", "curve", "steps_to_target"):
            row[key] = row[key][::-1]
    result = reproduction(here, there, analyse(here, CONFIG), CONFIG)
    assert result["rows_identical"] == len(here) and all(a["agrees"] for a in result["agreement"])


def _set(path, value):
    def edit(data):
        target = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


def _cell_holding(index, errors, chosen=False):
    """Cell ``index`` of channel's tuning made to hold ``errors`` with the mean and interval to match
    (and, with ``chosen``, to be the rate chosen): an edit that keeps every sum right, only the values
    impossible."""
    def edit(data):
        result = data["norms"]["channel"]
        cell = result["per_lr"][index]
        mean, ci = mean_ci(errors)
        cell.update(val_errors=list(errors), mean=mean, ci95=list(ci))
        if chosen:
            result["chosen_lr"] = cell["lr"]
    return edit


TUNING_EDITS = [
    ("-1000 % validation error", _cell_holding(0, [-1000.0, -1000.0], chosen=True),
     "val_errors must be 2 finite numbers in [0, 100]"),
    ("an error above 100 %", _cell_holding(1, [100.5, 150.0]), "in [0, 100]"),
    ("an interval not of its errors", _set(("norms", "channel", "per_lr", 1, "ci95"), [0.0, 1.0]), "ci95"),
    ("a negative loss", _set(("norms", "channel", "per_lr", 1, "final_train_loss"), [-0.1, 0.01]),
     "final_train_loss"),
    ("a seed without a loss that did not diverge",
     _set(("norms", "channel", "per_lr", 1, "final_train_loss"), [None, 0.01]), "a seed without a loss"),
    ("negative training time", _set(("norms", "channel", "train_seconds"), -1.0), "train_seconds"),
    ("a reused rate never measured", _set(("norms", "channel", "reused_lrs"), [0.7]), "reused_lrs"),
    ("a tuning seed twice", _set(("seeds",), [100, 100]), "seeds must be a list of distinct integers"),
    ("another SGD batch", _set(("sgd_batch",), 7), "sgd_batch 7 is not its config's SGD batch"),
    ("a grid out of order", _set(("lr_grid",), [0.2, 0.05]), "lr_grid must be increasing"),
    ("a grid without a measured rate", _set(("lr_grid",), [0.05]), "lr_grid [0.05] misses measured learning rates"),
    ("a command that is not text", _set(("environment",), {"command": ["tune"]}), "command must be a string"),
]


def _tuning_in(out, trained):
    assert cli.main(tune_args(out)) == 0
    return json.loads((out / "tuning.json").read_text())


@pytest.mark.parametrize("name, edit, message", TUNING_EDITS, ids=[t[0] for t in TUNING_EDITS])
def test_a_tuning_json_a_run_cannot_produce_is_never_reused(tmp_path, trained, capsys, monkeypatch, name, edit,
                                                           message):
    from channelnorm.experiments import tuned_lrs
    out = tmp_path / "tuning"
    data = _tuning_in(out, trained)
    edit(data)
    (out / "tuning.json").write_text(json.dumps(data))
    defaults = tmp_path / "tuned_lrs.json"
    defaults.write_text(tuned_lrs.DEFAULTS_FILE.read_text())
    monkeypatch.setattr(tuned_lrs, "DEFAULTS_FILE", defaults)
    trained.clear()
    before = snapshot(tmp_path)
    code, err = refused(tune_args(out, "--lrs", "0.05,0.2,0.4", "--write-defaults"), capsys)
    assert code == 2 and str(out / "tuning.json") in err and message in err
    assert trained == [] and snapshot(tmp_path) == before        # nothing trained, no default rewritten


# ---- item 7: every damaged or impossible input is a clear error ----

DEEP = "[" * 200_000 + "]" * 200_000


def _compare_dir(out, trained):
    assert cli.main(compare_args(out)) == 0
    return out


@pytest.mark.parametrize("name", ["config.json", "results.json", "environment.json", KIND_FILE, "record.json",
                                  "tuning.json"])
def test_deeply_nested_json_in_any_run_file_is_a_clear_error(tmp_path, trained, name):
    out = tmp_path / ("tuning" if name == "tuning.json" else "run")
    if name == "tuning.json":
        _tuning_in(out, trained)
    else:
        _compare_dir(out, trained)
    config = quick_config(norms=("channel",), norm_batches=(16,), coupled_batches=(16,), seeds=(0,), workers=1,
                          out=str(out))
    path = record_path(out, plan(config)[0].run_id(0)) if name == "record.json" else out / name
    path.write_text(DEEP)
    readers = {
        "config.json": [lambda: check_resume(out, config), lambda: read_finished_run(out, "verdicts")],
        "results.json": [lambda: read_finished_run(out, "verdicts")],
        "environment.json": [lambda: _previous_sweeps(out), lambda: read_finished_run(out, "verdicts")],
        KIND_FILE: [lambda: run_kind(out)],
        "record.json": [lambda: finished_record(out, plan(config)[0].key(0), config), lambda: read_record(out, path.parent.name)],
        "tuning.json": [lambda: tune.read_previous_tuning(out)],
    }[name]
    for read in readers:
        with pytest.raises(ConfigError, match="nested too deeply") as error:
            read()
        assert str(path) in str(error.value)


def test_deeply_nested_results_reach_the_user_as_a_clear_error(tmp_path, capsys):
    write_run(tmp_path / "a", CONFIG, grid_rows())
    write_run(tmp_path / "b", CONFIG, grid_rows())
    (tmp_path / "b" / "results.json").write_text(DEEP)
    code, err = refused(["verdicts", str(tmp_path / "a"), str(tmp_path / "b")], capsys)
    assert code == 2 and "results.json is nested too deeply" in err


@pytest.mark.parametrize("content, message", [
    (b"\xff\xfe{}", "is not UTF-8 text"),
    (b'["norms", "seeds"]', "holds a JSON list where an object belongs"),
    (b'"channel"', "holds a JSON str where an object belongs"),
    (b'{"epochs": 1e308}', "more than 1e+10 training samples"),
    (b'{"norms": 5}', "cannot be read as an experiment config"),
])
def test_a_config_json_that_is_not_a_config_is_a_clear_error(tmp_path, trained, capsys, content, message):
    out = _compare_dir(tmp_path / "run", trained)
    (out / "config.json").write_bytes(content)
    trained.clear()
    code, err = refused(compare_args(out), capsys)
    assert code == 2 and str(out / "config.json") in err and message in err and trained == []
    write_run(tmp_path / "a", CONFIG, grid_rows())
    code, err = refused(["verdicts", str(tmp_path / "a"), str(out)], capsys)
    assert code == 2 and str(out / "config.json") in err and message in err


@pytest.mark.parametrize("environment, message", [
    ({"sweeps": 5}, "sweeps is 5, expected a list of objects"),
    ({"sweeps": [1, 2]}, "sweeps is [1, 2], expected a list of objects"),
    ([], "holds a JSON list where an object belongs"),
    ({"cpu_capability": ["AVX2"]}, "cpu_capability is ['AVX2'], expected a string or null"),
])
def test_a_damaged_environment_json_is_refused_before_anything_trains(tmp_path, trained, capsys, environment,
                                                                      message):
    out = _compare_dir(tmp_path / "run", trained)
    (out / "environment.json").write_text(json.dumps(environment))
    trained.clear()
    code, err = refused(compare_args(out, "--seeds", "0,1"), capsys)      # seed 1 would have to train
    assert code == 2 and str(out / "environment.json") in err and message in err
    assert trained == []


def test_a_damaged_environment_json_is_refused_by_verdicts(tmp_path, capsys):
    write_run(tmp_path / "a", CONFIG, grid_rows())
    write_run(tmp_path / "b", CONFIG, grid_rows())
    (tmp_path / "b" / "environment.json").write_text(json.dumps({"cpu_capability": {"isa": 1}}))
    code, err = refused(["verdicts", str(tmp_path / "a"), str(tmp_path / "b")], capsys)
    assert code == 2 and "cpu_capability is {'isa': 1}, expected a string or null" in err


@pytest.mark.parametrize("replaced", ["run folder", "runs folder"])
def test_a_run_folder_replaced_by_a_file_is_a_clear_error(tmp_path, trained, capsys, replaced):
    out = _compare_dir(tmp_path / "run", trained)
    config = quick_config(norms=("channel",), norm_batches=(16,), coupled_batches=(16,), seeds=(0,), out=str(out))
    folder = run_dir(out, plan(config)[0].run_id(0)) if replaced == "run folder" else out / "runs"
    import shutil
    shutil.rmtree(folder)
    folder.write_text("not a folder")
    trained.clear()
    code, err = refused(compare_args(out), capsys)
    assert code == 2 and f"{folder} is a file where the run directory has a folder" in err and trained == []


@pytest.mark.parametrize("command", ["compare", "tune"])
@pytest.mark.parametrize("flags, message", [
    (["--epochs", "1e308"], "epochs 1e+308 x train_size 400 is more than 1e+10 training samples"),
    (["--train-size", str(10**30)], f"train_size {10**30} is more than 1e+10"),
])
def test_an_impossible_number_of_training_samples_is_a_clear_error(tmp_path, trained, capsys, command, flags, message):
    argv = (compare_args if command == "compare" else tune_args)(tmp_path / "out", *flags)
    code, err = refused(argv, capsys)
    assert code == 2 and message in err and trained == [] and not (tmp_path / "out").exists()


def test_tune_refuses_a_validation_split_larger_than_the_training_set_before_training(tmp_path, trained, capsys):
    code, err = refused(tune_args(tmp_path / "out", "--val-size", "100000"), capsys)
    assert code == 2 and "--val-size 100000 held out of 400 training images leaves -99600" in err
    assert trained == [] and not (tmp_path / "out").exists()
    code, err = refused(tune_args(tmp_path / "out", "--val-size", "390"), capsys)   # 10 left, SGD batch 16
    assert code == 2 and "use a --val-size of at most 384" in err and trained == []
    with pytest.raises(ConfigError, match="--val-size 390"):               # the API checks it too
        tune.run_tuning(quick_config(norms=("channel",), val_size=390, workers=1), workers=1)
    assert trained == []


def test_the_one_reader_tells_a_cut_short_file_from_a_damaged_one(tmp_path):
    (tmp_path / "cut.json").write_text('{"a": [1, 2')
    (tmp_path / "nan.json").write_text('{"a": NaN}')
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(NotJsonError):
        read_json(tmp_path / "cut.json", tmp_path)
    with pytest.raises(RunDirectoryError, match="NaN is not a JSON number") as error:
        read_json(tmp_path / "nan.json", tmp_path)
    assert not isinstance(error.value, NotJsonError)
    assert read_json(tmp_path / "list.json", tmp_path, list) == [1]
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "absent.json", tmp_path)
    os.mkfifo(tmp_path / "fifo.json")
    with pytest.raises(RunDirectoryError, match="not a regular file"):
        read_json(tmp_path / "fifo.json", tmp_path)
