"""Resuming a sweep: finished cells are skipped, unfinished or damaged ones are redone."""
import json

import pytest

from channelnorm.experiments import sweep as sweep_module
from channelnorm.experiments.config import ConfigError, quick_config
from channelnorm.experiments.pipeline import run_compare
from channelnorm.experiments.rundir import read_record, record_path, run_dir
from channelnorm.experiments.sweep import plan, run_sweep


def tiny(tmp_path, **changes):
    settings = dict(norms=("channel",), norm_batches=(2, 4), sgd_batch=4, coupled_norms=(), coupled_batches=(),
                    seeds=(0, 1), train_size=40, test_size=20, precise_size=8, curve_size=8, image_size=8, width=2,
                    workers=1, out=str(tmp_path), epochs=1.0, faithful_cell=None, lr_factors=(), frozen_tail=0.0)
    settings.update(changes)
    return quick_config(**settings)


@pytest.fixture
def counted(monkeypatch):
    """Counts the cells actually trained (cell ids, in order)."""
    trained = []
    real = sweep_module.train_members

    def counting(plan, *args, **kwargs):
        trained.append(f"decoupled-{plan.norm}-nb{plan.norm_batch}-sgd{plan.sgd_batch}")
        return real(plan, *args, **kwargs)
    monkeypatch.setattr(sweep_module, "train_members", counting)
    return trained


def test_finished_runs_are_skipped_and_damaged_ones_redone(tmp_path, counted):
    config = tiny(tmp_path)
    assert run_sweep(config, tmp_path, progress=False) == {"executed": 2, "skipped": 0}
    assert len(counted) == 2
    assert run_sweep(config, tmp_path, progress=False) == {"executed": 0, "skipped": 2}
    assert len(counted) == 2

    # one seed's run killed before its record was written (metrics half written), one record truncated
    killed, truncated = "decoupled-channel-nb2-sgd4-seed1", "decoupled-channel-nb4-sgd4-seed0"
    record_path(tmp_path, killed).unlink()
    with open(run_dir(tmp_path, killed) / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "train", "step": 9')
    text = record_path(tmp_path, truncated).read_text()
    record_path(tmp_path, truncated).write_text(text[: len(text) // 2])
    assert read_record(tmp_path, truncated) is None

    assert run_sweep(config, tmp_path, progress=False) == {"executed": 2, "skipped": 0}
    assert sorted(counted[2:]) == ["decoupled-channel-nb2-sgd4", "decoupled-channel-nb4-sgd4"]
    for cell in plan(config):
        for seed in config.seeds:
            assert read_record(tmp_path, cell.run_id(seed)) is not None
            lines = (run_dir(tmp_path, cell.run_id(seed)) / "metrics.jsonl").read_text().splitlines()
            assert all(json.loads(line) for line in lines)       # the half-written line is gone
            assert json.loads(lines[-1])["kind"] == "final"


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path, counted, monkeypatch):
    config = tiny(tmp_path)
    real = sweep_module.train_members

    def interrupt_second(plan, *args, **kwargs):
        if len(counted) == 1:          # one cell trained (real counts it): the second is interrupted
            raise KeyboardInterrupt
        return real(plan, *args, **kwargs)
    monkeypatch.setattr(sweep_module, "train_members", interrupt_second)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path, progress=False)
    monkeypatch.setattr(sweep_module, "train_members", real)
    done = [c for c in plan(config) if sweep_module.cell_finished(tmp_path, c, config)]
    assert len(done) == 1
    assert run_sweep(config, tmp_path, progress=False) == {"executed": 1, "skipped": 1}


def test_resume_with_other_settings_is_a_clear_error(tmp_path):
    run_compare(tiny(tmp_path, norm_batches=(2,), seeds=(0, 1)), progress=False)
    with pytest.raises(ConfigError, match="epochs: 1.0 there, 2.0 now"):
        run_compare(tiny(tmp_path, norm_batches=(2,), seeds=(0, 1), epochs=2.0), progress=False)
    environment = json.loads((tmp_path / "environment.json").read_text())
    assert [s["executed"] for s in environment["sweeps"]] == [1]


def test_worker_processes_give_the_same_records_as_one_process(tmp_path):
    one = tiny(tmp_path / "one", workers=1)
    two = tiny(tmp_path / "two", workers=2)
    run_sweep(one, tmp_path / "one", progress=False)
    run_sweep(two, tmp_path / "two", progress=False)
    for cell in plan(one):
        for seed in one.seeds:
            a, b = read_record(tmp_path / "one", cell.run_id(seed)), read_record(tmp_path / "two", cell.run_id(seed))
            for key in ("errors", "final_train_loss", "samples", "torch_threads"):
                assert a[key] == b[key], (cell.run_id(seed), key)


def test_a_diverged_run_is_recorded_not_hidden(tmp_path):
    config = tiny(tmp_path, norms=("none",), norm_batches=(4,), seeds=(0, 1), lrs=(("none", 1e12),))
    run_compare(config, progress=False)
    record = read_record(tmp_path, "decoupled-none-nb4-sgd4-seed0")
    assert record["diverged"] is True and record["diverged_at_step"] is not None and record["converged"] is False
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows and all(r["converged"] is False and r["diverged"] == 2 for r in rows)
    assert "none decoupled norm-batch 4 sgd-batch 4" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_cell_computed_in_this_process_is_single_threaded_like_the_worker_runs(tmp_path, monkeypatch, workers):
    # every cell computes with 1 torch thread (CPU results depend on the thread count): in worker
    # processes, and in this process when --workers 1 or when a resume leaves a single cell pending
    import torch
    threads_seen = []
    real = sweep_module.train_members

    def spy(plan, *args, **kwargs):
        threads_seen.append(torch.get_num_threads())
        return real(plan, *args, **kwargs)
    monkeypatch.setattr(sweep_module, "train_members", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        config = tiny(tmp_path, norm_batches=(2,), seeds=(0,), workers=workers)
        assert run_sweep(config, tmp_path, progress=False) == {"executed": 1, "skipped": 0}
        assert threads_seen == [1]
        assert torch.get_num_threads() == 2          # the caller's setting is restored
    finally:
        torch.set_num_threads(before)


def test_other_analysis_thresholds_reanalyse_a_run_directory_without_training(tmp_path, counted):
    # thresholds every run meets: converged (loss below 100) and the target reached (error at most 100 %)
    config = tiny(tmp_path, norm_batches=(2,), seeds=(0, 1), converged_loss=100.0, target_error=100.0)
    run_compare(config, progress=False)
    assert len(counted) == 1
    record_files = {p: p.read_bytes() for p in (tmp_path / "runs").glob("*/record.json")}
    first = json.loads((tmp_path / "results.json").read_text())
    assert first and all(r["converged"] and None not in r["steps_to_target"] for r in first)

    # Every seed's final loss is above 1e-6 and no test error is at most 0.001 %: nothing converges
    # nor reaches the target. Nothing is trained again and the records stay as they were written.
    strict = config.with_(converged_loss=1e-6, target_error=0.001)
    run_compare(strict, progress=False)
    assert len(counted) == 1
    assert {p: p.read_bytes() for p in record_files} == record_files
    second = json.loads((tmp_path / "results.json").read_text())
    assert [r["errors"] for r in second] == [r["errors"] for r in first]
    assert all(r["converged"] is False and r["steps_to_target"] == [None, None] for r in second)
    assert json.loads((tmp_path / "config.json").read_text())["converged_loss"] == 1e-6
    assert "below 1e-06" in (tmp_path / "report.md").read_text()

    # Each threshold as the records' own final losses and curves give it (one seed below, one above).
    losses = sorted(read_record(tmp_path, f"decoupled-channel-nb2-sgd4-seed{s}")["final_train_loss"] for s in (0, 1))
    between = config.with_(converged_loss=(losses[0] + losses[1]) / 2)
    run_compare(between, progress=False)
    assert len(counted) == 1
    assert all(r["converged"] is False for r in json.loads((tmp_path / "results.json").read_text()))
    assert all(read_record(tmp_path, f"decoupled-channel-nb2-sgd4-seed{s}")["converged"] is True for s in (0, 1))
    environment = json.loads((tmp_path / "environment.json").read_text())
    assert [s["executed"] for s in environment["sweeps"]] == [1, 0, 0]


def test_the_thresholds_are_compare_flags_that_keep_the_grid_label():
    from channelnorm.experiments import cli
    parser = cli.build_parser()
    args = parser.parse_args(["compare", "--quick", "--converged-loss", "0.5", "--target-error", "30"])
    config = cli.config_from_args(args, set(), "runs/compare")
    assert (config.converged_loss, config.target_error, config.grid) == (0.5, 30.0, "quick")
    with pytest.raises(ConfigError, match="converged_loss"):
        cli.config_from_args(parser.parse_args(["compare", "--converged-loss", "nan"]), set(), "runs/compare")
