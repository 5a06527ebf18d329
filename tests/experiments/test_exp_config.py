"""Configuration of ``channelnorm compare``: validation, presets, the command line's errors."""
import dataclasses

import pytest
import torch

import channelnorm as cn
from channelnorm.experiments import cli
from channelnorm.experiments.config import ConfigError, ExperimentConfig, full_config, quick_config
from channelnorm.experiments.rundir import check_resume, write_json_atomic
from channelnorm.experiments.models import build_model
from channelnorm.experiments.grid import Cell, cell_seeds, plan


def test_defaults_are_valid_frozen_and_round_trip():
    config = ExperimentConfig()
    assert config.norms == ("channel", "group", "layer", "layer2d", "instance", "none")
    assert config.sgd_batch == 32 and 32 in config.norm_batches and 2 in config.norm_batches
    assert config.coupled_norms == () and config.coupled_batches == ()      # coupled cells: --full only
    assert config.faithful_cell == (2, 16) and config.lr_factors == (0.5, 2.0) and config.frozen_tail > 0
    assert len(config.seeds) >= 8 and config.test_size >= 5_000 and config.curve_points >= 30
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    with_lrs = config.with_(lrs=(("bn", 0.1), ("group", 0.05)))
    assert with_lrs.lrs == (("channel", 0.1), ("group", 0.05))
    assert ExperimentConfig.from_dict(with_lrs.to_dict()) == with_lrs
    assert set(full_config().norms) == {"channel", "group", "layer", "layer2d", "instance", "none", "batch_renorm",
                                        "frn", "evonorm_s0", "evonorm_b0"}
    assert full_config().norm_batches == (2, 4, 8, 16, 32) and full_config().coupled_batches == (2, 32)


def test_aliases_resolve_to_canonical_kinds():
    assert ExperimentConfig(norms=("bn", "GN", "ln")).norms == ("channel", "group", "layer")


@pytest.mark.parametrize("changes, message", [
    ({"norms": ("channel", "bogus")}, "unknown norm kind 'bogus'; choose one of"),
    ({"norms": ()}, "norms must not be empty"),
    ({"norms": ("bn", "channel")}, "duplicates"),
    ({"norm_batches": (1, 2)}, "normalization batch must be an integer >= 2, got 1"),
    ({"norm_batches": (2, 64)}, "normalization batch 64 is larger than the SGD batch 32"),
    ({"norm_batches": (2.5,)}, "got 2.5"),
    ({"coupled_batches": (1,)}, "coupled batch must be an integer >= 2, got 1"),
    ({"seeds": (-1,)}, "seed must be an integer >= 0, got -1"),
    ({"seeds": (0, 2**64)}, f"seed must be at most 2\\*\\*64 - 1, got {2**64}"),
    ({"epochs": 0}, "epochs must be a finite number in (0.0, inf], got 0"),
    ({"epochs": float("nan")}, "epochs"),
    ({"train_size": 5}, "train_size must be an integer >= 10, got 5"),
    ({"sgd_batch": 64, "norm_batches": (2,), "train_size": 40}, "batch 64 is larger than train_size 40"),
    ({"warmup_fraction": 1.0}, "warmup_fraction must be a finite number in [0.0, 1.0), got 1.0"),
    ({"colour_variation": 1.5}, "colour_variation"),
    ({"contrast_variation": 1.0}, "contrast_variation"),
    ({"lrs": (("channel", -0.1),)}, "learning rate of channel"),
    ({"device": "tpu"}, "device must be 'cpu' or 'cuda'"),
    ({"workers": 0}, "workers must be an integer >= 1, got 0"),
    ({"width": 0}, "width"),
])
def test_invalid_values_are_named(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ExperimentConfig(**changes)


@pytest.mark.parametrize("kind", cn.available_norms())
def test_every_registered_kind_builds_and_trains_in_the_network(kind):
    model = build_model(kind, 4, 2, max_groups=2)
    out = model(torch.randn(2, 6, 12, 12))
    out.sum().backward()
    assert out.shape == (2, 2, 10) and torch.isfinite(out).all()


def test_the_grid_is_decoupled_for_channel_norm_and_shares_the_coupled_cell_at_the_sgd_batch():
    config = ExperimentConfig(coupled_norms=("channel", "group"), coupled_batches=(2, 32))
    cells = plan(config)
    main = [c for c in cells if not c.is_variant]
    assert {c for c in main if c.norm == "channel" and c.protocol == "decoupled"} == {
        Cell("channel", "decoupled", nb, 32) for nb in config.norm_batches} | {Cell("channel", "decoupled", 2, 16)}
    for norm in ("group", "layer", "layer2d", "instance", "none"):          # batch-independent: trained once
        assert [c for c in cells if c.norm == norm and c.protocol == "decoupled"] == [Cell(norm, "decoupled", 32, 32)]
    assert {c for c in cells if c.protocol == "coupled"} == {Cell("channel", "coupled", 2, 2),
                                                             Cell("group", "coupled", 2, 2)}
    # variant cells: the learning-rate grid at the smallest and the SGD batch, the frozen tail at the smallest
    assert {c for c in cells if c.is_variant} == (
        {Cell("channel", "decoupled", nb, 32, lr_scale=f) for nb in (2, 32) for f in (0.5, 2.0)}
        | {Cell("channel", "decoupled", 2, 32, frozen_tail=True)})
    assert all(len(cell_seeds(c, config)) == (4 if c.is_variant else 8) for c in cells)
    assert len(set(cells)) == len(cells)
    # every decoupled cell runs the same steps; coupled cells the same samples
    assert {config.steps(c.sgd_batch) * c.sgd_batch for c in cells} == {config.samples()}


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["compare", "--norms", "channel,bogus"], "unknown norm kind 'bogus'"),
    (["compare", "--norm-batches", "2,x"], "expected comma-separated integers, got '2,x'"),
    (["compare", "--norm-batches", "0"], "got 0"),
    (["compare", "--lr", "0.1"], "expected norm=lr pairs"),
    (["compare", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["compare", "--quick", "--full"], "not allowed with argument"),
    (["compare", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["compare", "--epochs", "-1"], "epochs must be a finite number in (0.0, inf], got -1.0"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_cli_errors_are_clear(argv, message, capsys):
    code, err = run_cli(argv, capsys)
    assert code == 2 and message in err


def test_cli_presets_and_overrides():
    parser = cli.build_parser()

    def config(*argv):
        args = parser.parse_args(["compare", *argv])
        return cli.config_from_args(args, {n for n in cli.OVERRIDES if hasattr(args, n)}, "runs/compare")

    assert config() == ExperimentConfig(out="runs/compare")
    assert config("--quick").grid == "quick" and config("--quick").out == "runs/compare-quick"
    assert config("--full").norms == full_config().norms
    assert config("--lr", "bn=0.3").lrs == (("channel", 0.3),)
    custom = config("--norms", "robust,bn", "--seeds", "0,1", "--train-size", "all", "--workers", "1")
    assert custom.norms == ("batch_renorm", "frn", "evonorm_s0", "evonorm_b0", "channel")
    assert custom.seeds == (0, 1) and custom.train_size is None and custom.workers == 1
    assert custom.grid == "custom"
    assert config("--data-dir", "somewhere").train_size is None


def test_resume_refuses_a_directory_with_other_settings(tmp_path):
    config = quick_config(out=str(tmp_path))
    assert check_resume(tmp_path, config) is False
    write_json_atomic(tmp_path / "config.json", config.to_dict())
    assert check_resume(tmp_path, config) is True
    assert check_resume(tmp_path, config.with_(seeds=(0, 1, 2), workers=1)) is True   # the grid may grow
    with pytest.raises(ConfigError, match=r"epochs: 2.0 there, 3.0 now"):
        check_resume(tmp_path, config.with_(epochs=3.0))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        check_resume(tmp_path, config)


def test_self_activated_norms_replace_norm_plus_relu():
    from torch import nn
    plain = build_model("channel", 4)
    activated = build_model("evonorm_b0", 4)
    assert isinstance(plain.stem[2], nn.ReLU) and isinstance(plain.blocks[0].act1, nn.ReLU)
    assert isinstance(activated.stem[2], nn.Identity) and isinstance(activated.blocks[0].act1, nn.Identity)
    assert isinstance(activated.blocks[0].relu, nn.ReLU)      # the ReLU after the residual addition stays


def test_cli_refuses_an_unreadable_data_dir_and_leaves_no_config_behind(tmp_path, capsys):
    out = tmp_path / "run"
    missing = tmp_path / "no-cifar-here"
    code, err = run_cli(["compare", "--quick", "--data-dir", str(missing), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and str(missing) in err and "data_batch_1" in err
    # the failed invocation must not block the corrected one with a stale config.json
    assert not (out / "config.json").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (broken / name).write_bytes(b"\x80\x02not a pickle")
    code, err = run_cli(["compare", "--quick", "--data-dir", str(broken), "--out", str(out), "--no-progress"], capsys)
    assert code == 2 and str(broken) in err
    assert not (out / "config.json").exists()


def test_cli_refuses_an_out_that_cannot_be_a_directory(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("not a directory")
    code, err = run_cli(["compare", "--quick", "--out", str(a_file), "--no-progress"], capsys)
    assert code == 2 and f"--out '{a_file}'" in err


def test_resume_accepts_another_spelling_of_the_same_data_dir(tmp_path, monkeypatch):
    parser = cli.build_parser()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar").mkdir()

    def config(*argv):
        args = parser.parse_args(["compare", "--quick", "--out", str(tmp_path / "run"), *argv])
        return cli.config_from_args(args, {n for n in cli.OVERRIDES if hasattr(args, n)}, "runs/compare")
    first = config("--data-dir", "cifar/")
    write_json_atomic(tmp_path / "run" / "config.json", first.to_dict())
    for spelling in ("cifar", "./cifar", str(tmp_path / "cifar")):
        assert check_resume(tmp_path / "run", config("--data-dir", spelling)) is True
    with pytest.raises(ConfigError, match="data_dir"):
        check_resume(tmp_path / "run", config("--data-dir", "elsewhere"))
