"""Resuming a sweep: finished runs are skipped, unfinished or damaged ones are redone."""
import json

import pytest

from channelnorm.experiments import sweep as sweep_module
from channelnorm.experiments.config import ConfigError, quick_config
from channelnorm.experiments.pipeline import run_compare
from channelnorm.experiments.rundir import read_record, record_path, run_dir
from channelnorm.experiments.sweep import plan, run_sweep


def tiny(tmp_path, **changes):
    settings = dict(norms=("channel",), batch_sizes=(2, 4), seeds=(0, 1), train_size=40, test_size=20,
                    image_size=8, width=2, workers=1, out=str(tmp_path))
    settings.update(changes)
    return quick_config(**settings)


@pytest.fixture
def counted(monkeypatch):
    """Counts the runs actually trained (run ids, in order)."""
    trained = []
    real = sweep_module.train_run

    def counting(spec, *args, **kwargs):
        trained.append(spec.run_id)
        return real(spec, *args, **kwargs)
    monkeypatch.setattr(sweep_module, "train_run", counting)
    return trained


def test_finished_runs_are_skipped_and_damaged_ones_redone(tmp_path, counted):
    config = tiny(tmp_path)
    assert run_sweep(config, tmp_path, progress=False) == {"executed": 4, "skipped": 0}
    assert len(counted) == 4
    assert run_sweep(config, tmp_path, progress=False) == {"executed": 0, "skipped": 4}
    assert len(counted) == 4

    # one run killed before its record was written (metrics half written), one record truncated
    killed, truncated = "channel-bs2-seed1", "channel-bs4-seed0"
    record_path(tmp_path, killed).unlink()
    with open(run_dir(tmp_path, killed) / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "step": 9')
    text = record_path(tmp_path, truncated).read_text()
    record_path(tmp_path, truncated).write_text(text[: len(text) // 2])
    assert read_record(tmp_path, truncated) is None

    assert run_sweep(config, tmp_path, progress=False) == {"executed": 2, "skipped": 2}
    assert sorted(counted[4:]) == sorted([killed, truncated])
    for spec in plan(config):
        assert read_record(tmp_path, spec.run_id) is not None
        lines = (run_dir(tmp_path, spec.run_id) / "metrics.jsonl").read_text().splitlines()
        assert all(json.loads(line) for line in lines)       # the half-written line is gone
        assert json.loads(lines[-1])["kind"] == "final"


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path, counted, monkeypatch):
    config = tiny(tmp_path)
    real = sweep_module.train_run

    def interrupt_third(spec, *args, **kwargs):
        if len(counted) == 2:          # two runs trained: the third is interrupted
            raise KeyboardInterrupt
        return real(spec, *args, **kwargs)
    monkeypatch.setattr(sweep_module, "train_run", interrupt_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path, progress=False)
    monkeypatch.setattr(sweep_module, "train_run", real)
    done = [s.run_id for s in plan(config) if read_record(tmp_path, s.run_id) is not None]
    assert len(done) == 2
    assert run_sweep(config, tmp_path, progress=False) == {"executed": 2, "skipped": 2}


def test_resume_with_other_settings_is_a_clear_error(tmp_path):
    run_compare(tiny(tmp_path, batch_sizes=(2,), seeds=(0,)), progress=False)
    with pytest.raises(ConfigError, match="epochs: 1.0 there, 2.0 now"):
        run_compare(tiny(tmp_path, batch_sizes=(2,), seeds=(0,), epochs=2.0), progress=False)
    environment = json.loads((tmp_path / "environment.json").read_text())
    assert [s["executed"] for s in environment["sweeps"]] == [1]


def test_worker_processes_give_the_same_records_as_one_process(tmp_path):
    one = tiny(tmp_path / "one", workers=1)
    two = tiny(tmp_path / "two", workers=2)
    run_sweep(one, tmp_path / "one", progress=False)
    run_sweep(two, tmp_path / "two", progress=False)
    for spec in plan(one):
        a, b = read_record(tmp_path / "one", spec.run_id), read_record(tmp_path / "two", spec.run_id)
        for key in ("eval_error", "batch_stat_error", "final_train_loss", "samples"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (spec.run_id, key)


def test_a_diverged_run_is_recorded_not_hidden(tmp_path):
    config = tiny(tmp_path, norms=("none",), batch_sizes=(4,), seeds=(0,), base_lr=1e12)
    run_compare(config, progress=False)
    record = read_record(tmp_path, "none-bs4-seed0")
    assert record["diverged"] is True and record["diverged_at_samples"] is not None
    assert record["eval_error"] == 1.0            # non-finite logits count as wrong
    report = (tmp_path / "report.md").read_text()
    assert "none at batch 4: 1 of 1 runs diverged" in report


def test_a_lone_pending_run_is_computed_single_threaded_like_the_worker_runs(tmp_path, monkeypatch):
    # workers=2 promises runs computed with 1 torch thread each; when a resume leaves a single run
    # pending, the sweep runs it in this process, which must then use 1 thread too (CPU results
    # depend on the thread count)
    import torch
    threads_seen = []
    real = sweep_module.train_run

    def spy(spec, *args, **kwargs):
        threads_seen.append(torch.get_num_threads())
        return real(spec, *args, **kwargs)
    monkeypatch.setattr(sweep_module, "train_run", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = tiny(tmp_path, batch_sizes=(2,), seeds=(0,), workers=2)
        assert run_sweep(config, tmp_path, progress=False) == {"executed": 1, "skipped": 0}
        assert threads_seen == [1]
        assert torch.get_num_threads() == 2          # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
