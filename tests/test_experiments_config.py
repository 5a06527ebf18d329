"""Configuration of ``channelnorm compare``: validation, presets, the command line's errors."""
import dataclasses

import pytest
import torch

import channelnorm as cn
from channelnorm.experiments import cli
from channelnorm.experiments.config import ConfigError, ExperimentConfig, full_config, quick_config
from channelnorm.experiments.rundir import check_resume, write_json_atomic
from channelnorm.experiments.train import RunSpec, build_model, norm_kwargs


def test_defaults_are_valid_frozen_and_round_trip():
    config = ExperimentConfig()
    assert config.norms == ("channel", "group", "layer", "instance", "none")
    assert config.batch_sizes == (2, 4, 8, 16, 32) and config.seeds == (0, 1, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.epochs = 3
    assert ExperimentConfig.from_dict(config.to_dict()) == config
    assert set(full_config().norms) == {"channel", "group", "layer", "instance", "none", "batch_renorm", "ghost",
                                        "frn", "evonorm_s0", "evonorm_b0"}


def test_aliases_resolve_to_canonical_kinds():
    assert ExperimentConfig(norms=("bn", "GN", "ln")).norms == ("channel", "group", "layer")


@pytest.mark.parametrize("changes, message", [
    ({"norms": ("channel", "bogus")}, "unknown norm 'bogus'; choose from"),
    ({"norms": ()}, "norms must not be empty"),
    ({"norms": ("bn", "channel")}, "duplicates"),
    ({"batch_sizes": (0, 2)}, "batch size must be an integer >= 1, got 0"),
    ({"batch_sizes": (2, -4)}, "got -4"),
    ({"batch_sizes": (2.5,)}, "got 2.5"),
    ({"batch_sizes": (1, 2)}, "batch size 1 is meaningless for channel"),
    ({"seeds": (-1,)}, "seed must be an integer >= 0, got -1"),
    ({"seeds": (0, 2**64)}, f"seed must be at most 2\\*\\*64 - 1, got {2**64}"),
    ({"epochs": 0}, "epochs must be a finite number > 0, got 0"),
    ({"epochs": float("nan")}, "epochs"),
    ({"epochs": 1e308}, "is too large: the number of training samples overflows"),
    ({"epochs": 1e308, "train_size": None}, "is too large: the number of training samples overflows"),
    ({"train_size": 5}, "train_size must be an integer >= 10, got 5"),
    ({"batch_sizes": (64,), "train_size": 40}, "batch size 64 is larger than train_size 40"),
    ({"warmup_fraction": 1.0}, "warmup_fraction must be in [0, 1), got 1.0"),
    ({"device": "tpu"}, "device must be 'cpu' or 'cuda'"),
    ({"workers": 0}, "workers must be an integer >= 1, got 0"),
    ({"width": 0}, "width"),
])
def test_invalid_values_are_named(changes, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        ExperimentConfig(**changes)


def test_batch_size_one_is_fine_for_batch_independent_norms():
    assert ExperimentConfig(norms=("group", "layer", "none"), batch_sizes=(1, 2)).batch_sizes == (1, 2)


@pytest.mark.parametrize("kind", cn.available_norms())
def test_every_registered_kind_builds_and_trains_in_the_network(kind):
    config = quick_config(norms=(kind,), batch_sizes=(2,))
    model = build_model(RunSpec(kind, 2, 0), config, total_steps=10)
    out = model(torch.randn(2, 3, 12, 12))
    out.sum().backward()
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_per_kind_settings_fit_the_channels_and_batch():
    config = ExperimentConfig(max_groups=8, ghost_batch=8)
    assert norm_kwargs("group", 24, 2, 100, config) == {"num_groups": 8}
    assert norm_kwargs("group", 12, 2, 100, config) == {"num_groups": 6}
    assert norm_kwargs("evonorm_s0", 5, 2, 100, config) == {"num_groups": 5}
    assert norm_kwargs("ghost", 16, 32, 100, config) == {"virtual_batch_size": 8}
    assert norm_kwargs("ghost", 16, 4, 100, config) == {"virtual_batch_size": 4}
    assert norm_kwargs("batch_renorm", 16, 4, 100, config)["warmup_steps"] == 25
    assert norm_kwargs("channel", 16, 4, 100, config) == {}


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["compare", "--norms", "channel,bogus"], "unknown norm 'bogus'"),
    (["compare", "--batch-sizes", "2,x"], "expected comma-separated integers, got '2,x'"),
    (["compare", "--batch-sizes", "0"], "got 0"),
    (["compare", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    (["compare", "--quick", "--full"], "not allowed with argument"),
    (["compare", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["compare", "--epochs", "-1"], "epochs must be a finite number > 0, got -1.0"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_cli_errors_are_clear(argv, message, capsys):
    code, err = run_cli(argv, capsys)
    assert code == 2 and message in err


def test_cli_presets_and_overrides():
    parser = cli.build_parser()

    def config(*argv):
        args = parser.parse_args(["compare", *argv])
        return cli.config_from_args(args, {n for n in cli.OVERRIDES if hasattr(args, n)})

    assert config() == ExperimentConfig(out="runs/compare")
    assert config("--quick").grid == "quick"
    assert config("--full").norms == full_config().norms
    custom = config("--norms", "robust,bn", "--seeds", "0,1", "--train-size", "all", "--workers", "1")
    assert custom.norms == ("batch_renorm", "ghost", "frn", "evonorm_s0", "evonorm_b0", "channel")
    assert custom.seeds == (0, 1) and custom.train_size is None and custom.workers == 1
    assert custom.grid == "custom"
    assert config("--data-dir", "somewhere").train_size is None


def test_resume_refuses_a_directory_with_other_settings(tmp_path):
    config = quick_config(out=str(tmp_path))
    assert check_resume(tmp_path, config) is False
    write_json_atomic(tmp_path / "config.json", config.to_dict())
    assert check_resume(tmp_path, config) is True
    assert check_resume(tmp_path, config.with_(seeds=(0, 1, 2), workers=1)) is True   # the grid may grow
    with pytest.raises(ConfigError, match=r"epochs: 1.0 there, 2.0 now"):
        check_resume(tmp_path, config.with_(epochs=2.0))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        check_resume(tmp_path, config)


def test_self_activated_norms_replace_norm_plus_relu():
    from torch import nn
    config = quick_config()
    plain = build_model(RunSpec("channel", 2, 0), config, total_steps=10)
    activated = build_model(RunSpec("evonorm_b0", 2, 0), config, total_steps=10)
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
        return cli.config_from_args(args, {n for n in cli.OVERRIDES if hasattr(args, n)})
    first = config("--data-dir", "cifar/")
    write_json_atomic(tmp_path / "run" / "config.json", first.to_dict())
    for spelling in ("cifar", "./cifar", str(tmp_path / "cifar")):
        assert check_resume(tmp_path / "run", config("--data-dir", spelling)) is True
    with pytest.raises(ConfigError, match="data_dir"):
        check_resume(tmp_path / "run", config("--data-dir", "elsewhere"))
