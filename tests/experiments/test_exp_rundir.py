"""Run directories are safe: records carry the fingerprint of their settings and are checked one by
one, a damaged record is an error naming it, one sweep at a time holds --out, writes are atomic and
never leave --out through a link, a full disk leaves no empty result, and workers die with the sweep."""
import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from channelnorm.experiments import cli, storage
from channelnorm.experiments import sweep as sweep_module
from channelnorm.experiments.config import quick_config
from channelnorm.experiments.lifeline import watch_parent
from channelnorm.experiments.pipeline import run_compare
from channelnorm.experiments.results import collect
from channelnorm.experiments.rundir import RunKey, finished_record, record_path, run_dir
from channelnorm.experiments.storage import RunDirectoryError, locked, write_atomic
from channelnorm.experiments.sweep import plan, run_sweep
from channelnorm.experiments.train import MemberLog

ROOT = Path(__file__).resolve().parents[2]
REAL_WRITE_ALL = storage._write_all


def tiny(out, **changes):
    settings = dict(norms=("channel",), norm_batches=(2, 4), sgd_batch=4, coupled_norms=(), coupled_batches=(),
                    seeds=(0, 1), train_size=40, test_size=20, precise_size=8, curve_size=8, image_size=8, width=2,
                    workers=1, out=str(out), epochs=1.0, faithful_cell=None, lr_factors=(), frozen_tail=0.0)
    settings.update(changes)
    return quick_config(**settings)


def rid(norm_batch, seed, norm="channel", sgd_batch=4, protocol="decoupled"):
    return f"{protocol}-{norm}-nb{norm_batch}-sgd{sgd_batch}-seed{seed}"


def fake_train_members(plan, train_x, train_y, curve=None, progress=None, population_x=None):
    """The wide network's training replaced (these tests are about files, not numbers): one log per
    member with the fields train.train_members fills, no model."""
    logs = [MemberLog(entries=[{"kind": "train", "step": plan.steps, "samples": plan.steps * plan.sgd_batch,
                                "lr": 0.0, "loss": 0.01},
                               {"kind": "curve", "step": plan.steps, "error": 25.0}], final_train_loss=0.01)
            for _ in plan.members]
    return None, logs, 0.1


def fake_evaluate_members(model, plan, test_x, test_y, precise_x):
    seeds = [m.seed for m in plan.members]
    return {"ema": [25.0 + s for s in seeds], "precise": [24.0 + s for s in seeds], "batch": [50.0 for _ in seeds]}


@pytest.fixture
def trained(monkeypatch):
    """Replaces training and evaluation by fakes; lists the run ids trained."""
    ids = []

    def train(plan, *args, **kwargs):
        ids.extend(rid(plan.norm_batch, m.seed, plan.norm, plan.sgd_batch) for m in plan.members)
        return fake_train_members(plan, *args, **kwargs)
    monkeypatch.setattr(sweep_module, "train_members", train)
    monkeypatch.setattr(sweep_module, "evaluate_members", fake_evaluate_members)
    return ids


def outside_files(tmp_path):
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())


# ---- fingerprints ----

def test_records_carry_the_fingerprint_of_the_settings_that_computed_them(tmp_path, trained):
    config = tiny(tmp_path, lrs=(("channel", 0.3),))
    run_sweep(config, tmp_path, progress=False)
    record = json.loads(record_path(tmp_path, rid(4, 1)).read_text())
    settings = record["settings"]
    # what changes a run's numbers is in; the grid, worker count and output path are not
    assert settings["epochs"] == 1.0 and settings["train_size"] == 40 and settings["sgd_batch"] == 4
    assert settings["run"] == {"norm": "channel", "protocol": "decoupled", "norm_batch": 4, "sgd_batch": 4, "seed": 1,
                               "lr_scale": 1.0, "frozen_tail": False}
    assert settings["peak_lr"] == 0.3 == record["peak_lr"]
    assert not {"seeds", "norm_batches", "norms", "coupled_norms", "coupled_batches", "workers", "out",
                "grid"} & set(settings)

    def canonical(value):      # integral floats as integers, at any depth
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in value.items()}
        if isinstance(value, list):
            return [canonical(v) for v in value]
        return value
    text = json.dumps(canonical(settings), sort_keys=True, separators=(",", ":")).encode()
    assert record["fingerprint"] == hashlib.sha256(text).hexdigest()
    other = json.loads(record_path(tmp_path, rid(4, 0)).read_text())
    assert other["fingerprint"] != record["fingerprint"]          # the seed is part of it
    assert record["provenance"]["torch"]


def test_the_tuned_learning_rate_is_part_of_the_fingerprint(tmp_path, trained, monkeypatch):
    from channelnorm.experiments import tuned_lrs
    config = tiny(tmp_path / "run")
    run_sweep(config, tmp_path / "run", progress=False)
    defaults = json.loads(tuned_lrs.DEFAULTS_FILE.read_text())
    defaults["synthetic"]["rates"]["channel"] *= 2                     # tuning rerun since
    (tmp_path / "tuned_lrs.json").write_text(json.dumps(defaults))
    monkeypatch.setattr(tuned_lrs, "DEFAULTS_FILE", tmp_path / "tuned_lrs.json")
    with pytest.raises(RunDirectoryError, match="peak_lr: "):
        run_sweep(config, tmp_path / "run", progress=False)


def test_the_same_number_written_as_int_or_float_is_the_same_setting(tmp_path, trained):
    run_sweep(tiny(tmp_path, epochs=2), tmp_path, progress=False)
    assert run_sweep(tiny(tmp_path, epochs=2.0), tmp_path, progress=False) == {"executed": 0, "skipped": 2}


def test_without_config_json_records_of_other_settings_are_refused_not_reused(tmp_path, trained):
    run_compare(tiny(tmp_path, epochs=1.0), progress=False)
    results = (tmp_path / "results.json").read_text()
    (tmp_path / "config.json").unlink()
    with pytest.raises(RunDirectoryError, match=rf"{rid(2, 0)}/record\.json.*epochs: 1\.0 there, 2\.0 now"):
        run_compare(tiny(tmp_path, epochs=2.0), progress=False)
    assert len(trained) == 4                                       # nothing recomputed, nothing mixed
    assert (tmp_path / "results.json").read_text() == results     # no report with wrong sample counts

    # the grid, the worker count and the output path are free to change on resume
    (tmp_path / "config.json").unlink()
    run_compare(tiny(tmp_path, seeds=(0, 1, 2), workers=1), progress=False)
    # a cell trains its seeds as one network: the cells missing seed 2 are trained again, all seeds
    assert trained[4:] == [rid(2, 0), rid(2, 1), rid(2, 2), rid(4, 0), rid(4, 1), rid(4, 2)]
    rows = json.loads((tmp_path / "results.json").read_text())
    assert [r["samples"] for r in rows] == [40] * 6 and [r["seeds"] for r in rows] == [[0, 1, 2]] * 6


def test_the_cli_reports_a_record_of_other_settings_naming_the_file(tmp_path, trained, capsys):
    out = tmp_path / "run"
    args = ["compare", "--quick", "--norms", "channel,group", "--norm-batches", "16", "--coupled-batches", "16",
            "--seeds", "0", "--workers", "1", "--out", str(out), "--no-progress", "--faithful-cell", "none",
            "--lr-factors", "none", "--frozen-tail", "0"]
    assert cli.main(args) == 0
    (out / "config.json").unlink()
    with pytest.raises(SystemExit) as stopped:
        cli.main(args + ["--epochs", "3"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert str(record_path(out, rid(16, 0, sgd_batch=16))) in err and "epochs: 2.0 there, 3.0 now" in err


# ---- damaged records ----

def _edit(record, **changes):
    return {**record, **changes}


DAMAGE = {
    "error above 100": (lambda r: _edit(r, eval_error=150.0, errors={**r["errors"], "ema": 150.0}),
                        "eval_error is 150.0, expected a finite number in [0, 100]"),
    "negative error": (lambda r: _edit(r, batch_stat_error=-0.1), "batch_stat_error is -0.1"),
    "NaN error": (lambda r: _edit(r, eval_error=float("nan")), "NaN is not a JSON number"),
    "string seed": (lambda r: _edit(r, seed="0"), "seed is '0', expected an integer"),
    "missing field": (lambda r: {k: v for k, v in r.items() if k != "converged"}, "converged missing"),
    "no fingerprint": (lambda r: {k: v for k, v in r.items() if k not in ("settings", "fingerprint")},
                       "settings, fingerprint missing"),
    "edited settings": (lambda r: _edit(r, settings={**r["settings"], "epochs": 9.0}),
                        "fingerprint does not match its settings"),
    "samples not steps x SGD batch": (lambda r: _edit(r, samples=44), "samples 44 are not steps 10 x SGD batch"),
    "not an object": (lambda r: [r], "JSON list, not an object"),
    "an evaluation missing": (lambda r: _edit(r, errors={"ema": 25.0, "batch": 50.0}),
                              "expected an object with exactly the evaluations ema, precise, batch"),
    "converged though diverged": (lambda r: _edit(r, diverged=True, diverged_at_step=3),
                                  "converged is true for a run that diverged"),
    "unknown protocol": (lambda r: _edit(r, protocol="ghost"), "protocol is 'ghost', expected one of decoupled"),
    # steps_to_target is re-derived from the curve and averaged as floats: a step no float holds cannot be
    "final loss no float holds": (lambda r: _edit(r, final_train_loss=10**400), "final_train_loss is 1000000"),
    "curve step no float holds": (lambda r: _edit(r, curve=[[10**400, 25.0]]), "curve is [[1000000"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_record_is_an_error_naming_it_and_never_averaged(tmp_path, trained, damage):
    config = tiny(tmp_path)
    run_sweep(config, tmp_path, progress=False)
    change, message = DAMAGE[damage]
    path = record_path(tmp_path, rid(4, 0))
    path.write_text(json.dumps(change(json.loads(path.read_text()))))
    for attempt in (lambda: run_sweep(config, tmp_path, progress=False), lambda: collect(tmp_path, config)):
        with pytest.raises(RunDirectoryError) as error:
            attempt()
        assert str(path) in str(error.value) and message in str(error.value)
    assert len(trained) == 4


def test_a_record_in_another_runs_folder_is_refused(tmp_path, trained):
    config = tiny(tmp_path)
    run_sweep(config, tmp_path, progress=False)
    # a record copied into the folder of another batch size, then one of another seed
    for source, target, field in ((rid(2, 0), rid(4, 0), "norm_batch"), (rid(2, 0), rid(2, 1), "seed")):
        saved = record_path(tmp_path, target).read_bytes()
        record_path(tmp_path, target).write_bytes(record_path(tmp_path, source).read_bytes())
        with pytest.raises(RunDirectoryError, match=f"{target}/record.json.*{field} is .* the run's folder is {target}"):
            collect(tmp_path, config)
        record_path(tmp_path, target).write_bytes(saved)
    assert sum(len(records) for records in collect(tmp_path, config).values()) == 4


# ---- one sweep at a time ----

def test_a_second_invocation_on_a_locked_out_is_refused(tmp_path, trained, capsys):
    out = tmp_path / "run"
    with locked(out):
        with pytest.raises(SystemExit) as stopped:
            cli.main(["compare", "--quick", "--norms", "none", "--out", str(out), "--no-progress"])
        assert stopped.value.code == 2
        assert f"{out} is in use by another channelnorm compare (pid {os.getpid()})" in capsys.readouterr().err
        assert not (out / "config.json").exists() and not (out / "runs").exists() and trained == []
    run_compare(tiny(out, norm_batches=(2,), seeds=(0,)), progress=False)    # released
    assert trained == [rid(2, 0)]


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(out / storage.LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, b"%d" % os.getpid())
        print("held", flush=True)
        time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(RunDirectoryError, match=f"in use by another channelnorm compare \\(pid {holder.pid}\\)"):
            with locked(out):
                pass
        os.kill(holder.pid, signal.SIGKILL)          # a killed sweep leaves its lock file behind
        holder.wait(timeout=10)
        assert (out / storage.LOCK_NAME).exists()
        with locked(out):                           # ... which does not block the next one
            assert (out / storage.LOCK_NAME).read_text() == f"{os.getpid()}\n"
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        holder.stdout.close()


# ---- links and atomic writes ----

OUTPUTS = ("config.json", "environment.json", "results.json", "results.csv", "analysis.json", "error_vs_batch.png",
           "curves.png", "report.md")


def test_outputs_replace_links_in_their_place_and_never_write_through_them(tmp_path, trained):
    out, victim = tmp_path / "run", tmp_path / "victim"
    out.mkdir()
    victim.mkdir()
    for name in OUTPUTS:
        (victim / name).write_text("precious")
        (out / name).symlink_to(victim / name)
    run_dir(out, rid(2, 0)).mkdir(parents=True)
    (victim / "metrics.jsonl").write_text("precious")
    (run_dir(out, rid(2, 0)) / "metrics.jsonl").symlink_to(victim / "metrics.jsonl")
    (out / "config.json").unlink()       # a link there would be read as the sweep's config

    run_compare(tiny(out, norm_batches=(2,), seeds=(0,)), progress=False)
    assert all((victim / name).read_text() == "precious" for name in OUTPUTS + ("metrics.jsonl",))
    for name in OUTPUTS:
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 0, name
    metrics = run_dir(out, rid(2, 0)) / "metrics.jsonl"
    assert not metrics.is_symlink() and json.loads(metrics.read_text().splitlines()[-1])["kind"] == "final"


def test_a_linked_folder_or_record_is_refused_naming_it(tmp_path, trained):
    out, victim = tmp_path / "run", tmp_path / "victim"
    victim.mkdir()
    out.mkdir()
    (out / "runs").symlink_to(victim)
    with pytest.raises(RunDirectoryError, match=f"{out / 'runs'} is a symbolic link \\(to {victim}\\)"):
        run_sweep(tiny(out), out, progress=False)
    assert list(victim.iterdir()) == [] and trained == []

    (out / "runs").unlink()
    config = tiny(out, norm_batches=(2,), seeds=(0,))
    run_sweep(config, out, progress=False)
    path = record_path(out, rid(2, 0))
    (victim / "record.json").write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(victim / "record.json")
    with pytest.raises(RunDirectoryError, match=f"{path} is a symbolic link"):
        finished_record(out, plan(config)[0].key(0), config)
    with pytest.raises(RunDirectoryError, match="not a file inside the run directory"):
        write_atomic(out / ".." / "escaped.txt", "x", root=out)
    assert not (tmp_path / "escaped.txt").exists()


def test_temporary_files_of_a_killed_write_are_cleared_when_the_run_is_redone(tmp_path, trained):
    config = tiny(tmp_path, norm_batches=(2,), seeds=(0,))
    folder = run_dir(tmp_path, rid(2, 0))
    folder.mkdir(parents=True)
    leftover = folder / ".record.json.0123456789ab.tmp"
    leftover.write_text('{"run_id": ')
    (folder / "notes.txt").write_text("mine")
    run_sweep(config, tmp_path, progress=False)
    assert sorted(os.listdir(folder)) == ["metrics.jsonl", "notes.txt", "record.json"]


def _disk_full_after(limit, calls):
    """A replacement for storage._write_all that writes ``limit`` bytes, then fails as a full disk does."""
    def write_all(fd, data):
        calls.append(len(data))
        os.write(fd, data[:limit])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return write_all


@pytest.mark.parametrize("limit", [0, 5])
def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_file(tmp_path, monkeypatch, limit):
    calls = []
    monkeypatch.setattr(storage, "_write_all", _disk_full_after(limit, calls))
    target = tmp_path / "new.json"
    with pytest.raises(RunDirectoryError, match=f"cannot write {target}: .*\\(disk full\\)"):
        storage.write_json(target, {"a": 1})
    with pytest.raises(RunDirectoryError, match="disk full"):
        write_atomic(tmp_path / "old.txt", "new content", root=tmp_path)
    assert calls and os.listdir(tmp_path) == []              # no empty, partial or temporary file

    monkeypatch.undo()
    (tmp_path / "old.txt").write_text("old content")
    monkeypatch.setattr(storage, "_write_all", _disk_full_after(limit, calls))
    with pytest.raises(RunDirectoryError):
        write_atomic(tmp_path / "old.txt", "new content", root=tmp_path)
    assert os.listdir(tmp_path) == ["old.txt"] and (tmp_path / "old.txt").read_text() == "old content"


def test_a_full_disk_while_writing_a_record_leaves_the_run_unfinished(tmp_path, trained, monkeypatch):
    config = tiny(tmp_path, norm_batches=(2,), seeds=(0,))
    calls = []
    disk_full = _disk_full_after(3, [])

    def metrics_fit_then_the_disk_is_full(fd, data):      # the run's metrics.jsonl is written first
        calls.append(len(data))
        return (REAL_WRITE_ALL if len(calls) == 1 else disk_full)(fd, data)
    monkeypatch.setattr(storage, "_write_all", metrics_fit_then_the_disk_is_full)
    with pytest.raises(RunDirectoryError, match=f"cannot write {record_path(tmp_path, rid(2, 0))}"):
        run_sweep(config, tmp_path, progress=False)
    folder = run_dir(tmp_path, rid(2, 0))
    assert sorted(os.listdir(folder)) == ["metrics.jsonl"]   # no record.json, empty or partial
    monkeypatch.setattr(storage, "_write_all", REAL_WRITE_ALL)
    assert run_sweep(config, tmp_path, progress=False) == {"executed": 1, "skipped": 0}   # space freed: resumes
    assert finished_record(tmp_path, RunKey("channel", "decoupled", 2, 4, 0), config)["eval_error"] == 25.0


def test_a_full_disk_while_writing_metrics_is_a_clear_error(tmp_path, trained, monkeypatch):
    config = tiny(tmp_path, norm_batches=(2,), seeds=(0,))
    monkeypatch.setattr(storage, "_write_all", _disk_full_after(0, []))
    metrics = run_dir(tmp_path, rid(2, 0)) / "metrics.jsonl"
    with pytest.raises(RunDirectoryError, match=f"cannot write {metrics}: .*disk full"):
        run_sweep(config, tmp_path, progress=False)
    assert os.listdir(run_dir(tmp_path, rid(2, 0))) == []


def test_the_write_loop_survives_short_writes(tmp_path, monkeypatch):
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:3])))
    write_atomic(tmp_path / "f.bin", bytes(range(200)))
    monkeypatch.undo()
    assert (tmp_path / "f.bin").read_bytes() == bytes(range(200))


# ---- workers die with the sweep ----

def test_the_parent_watch_exits_once_the_parent_changes():
    parents, exits = iter([100, 100, 100, 1]), []
    watch_parent(100, 0.0, getppid=lambda: next(parents), exit=exits.append)
    assert exits == [1] and next(parents, None) is None


SWEEP_PARENT = """
import sys
from pathlib import Path
from channelnorm.experiments import sweep
from channelnorm.experiments.config import quick_config

class PidBars:                       # the sweep's progress messages carry the worker's pid
    def run_progress(self, pid, cell_id, done, total):
        print(pid, flush=True)
    def run_finished(self):
        pass

out = Path(sys.argv[1])
config = quick_config(norms=("channel",), norm_batches=(2,), sgd_batch=4, coupled_norms=(), coupled_batches=(),
                      seeds=(0,), train_size=40, test_size=20, precise_size=8, curve_size=8, image_size=8, width=2,
                      epochs=10000.0, workers=2, out=str(out))
sweep._run_in_workers(sweep.plan(config), config, out, PidBars(), workers=1)
"""


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:       # a zombie is dead, only not yet reaped by whoever adopted it
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return not Path("/proc").is_dir()


def test_a_worker_exits_when_the_sweep_is_killed(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    # stderr to a file: the killed sweep's resource tracker outlives it and reports leaked semaphores
    stderr = open(tmp_path / "stderr.txt", "w")
    parent = subprocess.Popen([sys.executable, "-c", SWEEP_PARENT, str(tmp_path / "out")], stdout=subprocess.PIPE,
                              stderr=stderr, text=True, env=env)
    worker = None
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), (tmp_path / "stderr.txt").read_text()
        worker = int(line)                                # the worker started its (hours-long) run
        assert _alive(worker)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _alive(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(worker), "the worker outlived the killed sweep"
    finally:
        for pid in (parent.pid, worker):
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGKILL)
        parent.stdout.close()
        stderr.close()


class _QuietBars:
    def run_progress(self, *args):
        pass

    def run_finished(self):
        pass


def test_a_run_directory_error_in_a_worker_reaches_the_user_unwrapped(tmp_path):
    out, victim = tmp_path / "run", tmp_path / "victim"
    victim.mkdir()
    config = tiny(out, norm_batches=(2,), seeds=(0,), workers=2)
    (out / "runs").mkdir(parents=True)
    (out / "runs" / rid(2, 0)).symlink_to(victim)       # the worker's run folder is a link out of --out
    with pytest.raises(RunDirectoryError, match=f"{out / 'runs' / rid(2, 0)} is a symbolic link"):
        sweep_module._run_in_workers(plan(config), config, out, _QuietBars(), workers=1)
    assert list(victim.iterdir()) == []


# ---- the tuning's outputs get the same care ----

def test_tuning_outputs_replace_links_and_tune_refuses_a_locked_out(tmp_path, capsys):
    from channelnorm.experiments.tune import write_tuning
    out, victim = tmp_path / "tuning", tmp_path / "victim"
    out.mkdir()
    victim.mkdir()
    for name in ("tuning.json", "report.md"):
        (victim / name).write_text("precious")
        (out / name).symlink_to(victim / name)
    tuning = {"sgd_batch": 4, "lr_grid": [0.1], "seeds": [100], "selection": "lowest mean validation error",
              "norms": {"channel": {"per_lr": [{"lr": 0.1, "mean": 3.0, "final_train_loss": [0.01], "diverged": 0}],
                                    "chosen_lr": 0.1}}}
    write_tuning(tuning, tiny(out), {"command": "channelnorm tune"}, out)
    assert all((victim / name).read_text() == "precious" for name in ("tuning.json", "report.md"))
    assert json.loads((out / "tuning.json").read_text())["norms"]["channel"]["chosen_lr"] == 0.1
    assert "| channel | 3.00 %" in (out / "report.md").read_text() and not (out / "report.md").is_symlink()

    with locked(out):
        with pytest.raises(SystemExit) as stopped:
            cli.main(["tune", "--quick", "--norms", "none", "--out", str(out), "--no-progress"])
    assert stopped.value.code == 2
    assert f"{out} is in use by another channelnorm compare" in capsys.readouterr().err
