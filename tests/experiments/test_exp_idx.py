"""IDX files (MNIST / Fashion-MNIST): read exactly, every malformed kind refused naming the file,
memory bounded by what a file really holds, and the 1-channel data set through the experiment."""
import gzip
import os
import re
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from channelnorm.experiments import cli, fashion_mnist, idx
from channelnorm.experiments.config import ConfigError, quick_config
from channelnorm.experiments.data import Dataset, load_dataset
from channelnorm.experiments.grid import Cell
from channelnorm.experiments.sweep import train_plan
from channelnorm.experiments.fashion_mnist import FILES

INSTALLED = Path(fashion_mnist.DEFAULT_DIR)


def idx_bytes(array, type_code=0x08, dims=None):
    """An IDX file's bytes: magic (0, 0, type, ndim), big-endian uint32 sizes, then the elements."""
    dims = array.shape if dims is None else dims
    return bytes([0, 0, type_code, len(dims)]) + struct.pack(f">{len(dims)}I", *dims) + array.tobytes()


def write(path, content, compress):
    Path(path).write_bytes(gzip.compress(content) if compress else content)
    return Path(path)


def write_folder(directory, n_train=40, n_test=20, side=(28, 28), compress=True, seed=0):
    """A tiny Fashion-MNIST folder; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {"train_images": rng.integers(0, 256, (n_train, *side), dtype=np.uint8),
              "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
              "test_images": rng.integers(0, 256, (n_test, *side), dtype=np.uint8),
              "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8)}
    os.makedirs(directory, exist_ok=True)
    for role, array in arrays.items():
        write(Path(directory) / (FILES[role] + (".gz" if compress else "")), idx_bytes(array), compress)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_folder_reads_back_exactly_what_was_written(tmp_path, compress):
    arrays = write_folder(tmp_path, compress=compress)
    read = fashion_mnist.load_idx_images(tmp_path)
    for images, key in ((read.train_x, "train_images"), (read.test_x, "test_images")):
        assert images.shape == (len(arrays[key]), 1, 28, 28) and images.dtype == torch.float32
        # oracle: the written bytes divided by 255 in float64, rounded once to float32
        expected = torch.from_numpy(arrays[key].astype(np.float64) / 255.0).float().unsqueeze(1)
        assert torch.equal(images, expected)
    assert read.train_y.tolist() == arrays["train_labels"].tolist()
    assert read.test_y.tolist() == arrays["test_labels"].tolist()
    assert read.train_y.dtype == torch.int64


def test_compression_is_told_by_content_not_by_name(tmp_path):
    images = np.arange(2 * 8 * 9, dtype=np.uint8).reshape(2, 8, 9)
    gzip_named_plain = write(tmp_path / "a-idx3-ubyte", idx_bytes(images), compress=True)
    plain_named_gz = write(tmp_path / "b-idx3-ubyte.gz", idx_bytes(images), compress=False)
    assert np.array_equal(idx.read_images(gzip_named_plain), images)
    assert np.array_equal(idx.read_images(plain_named_gz), images)


def test_plain_name_is_read_before_the_gz_name(tmp_path):
    write_folder(tmp_path, compress=True)
    plain = write_folder(tmp_path, compress=False, seed=1)
    read = fashion_mnist.load_idx_images(tmp_path, train_size=5, test_size=3)
    assert read.files[0].endswith("train-images-idx3-ubyte")
    assert torch.equal((read.train_x * 255).round().to(torch.uint8)[:, 0], torch.from_numpy(plain["train_images"][:5]))
    assert read.test_y.tolist() == plain["test_labels"][:3].tolist()


IMAGES = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)
# one malformed image file per kind: (content, what the error says)
MALFORMED = {
    "bad_magic": (b"\x01\x00" + idx_bytes(IMAGES)[2:], "not an IDX file"),
    "float_type": (idx_bytes(IMAGES.astype(">f4"), type_code=0x0D), "element type 0x0d (float32) is not supported"),
    "unknown_type": (idx_bytes(IMAGES, type_code=0x42), "element type 0x42 (not an IDX element type)"),
    "two_dims": (idx_bytes(IMAGES.reshape(3, 64)), "2 dimensions, expected 3"),
    "short_header": (idx_bytes(IMAGES)[:9], "truncated header"),
    "too_short_for_magic": (b"\x00\x00", "too short for an IDX header"),
    "truncated": (idx_bytes(IMAGES)[:-1], "is truncated"),
    "claims_more_images": (idx_bytes(IMAGES, dims=(4, 8, 8)), "is truncated"),
    "trailing_bytes": (idx_bytes(IMAGES) + b"\x00", "has trailing bytes"),
    "tiny_images": (idx_bytes(np.zeros((3, 7, 8), np.uint8)), "at least 8x8"),
    "no_images": (idx_bytes(np.zeros((0, 8, 8), np.uint8)), "holds no images"),
}


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
@pytest.mark.parametrize("kind", list(MALFORMED))
def test_each_malformed_image_file_is_refused_naming_it(tmp_path, kind, compress):
    content, message = MALFORMED[kind]
    path = write(tmp_path / "bad-images", content, compress)
    with pytest.raises(idx.IdxFormatError, match=re.escape(message)) as refused:
        idx.read_images(path)
    assert str(path) in str(refused.value)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_a_label_outside_0_to_9_is_refused(tmp_path, compress):
    path = write(tmp_path / "labels", idx_bytes(np.array([0, 9, 10, 3], np.uint8)), compress)
    with pytest.raises(idx.IdxFormatError, match="label 10 at index 2") as refused:
        idx.read_labels(path)
    assert str(path) in str(refused.value)
    labels = write(tmp_path / "labels2", idx_bytes(np.zeros((2, 2), np.uint8)), compress)
    with pytest.raises(idx.IdxFormatError, match="2 dimensions, expected 1"):
        idx.read_labels(labels)


def test_a_corrupt_gzip_stream_is_refused_naming_the_file(tmp_path):
    packed = bytearray(gzip.compress(idx_bytes(np.random.default_rng(0).integers(0, 256, (20, 28, 28), np.uint8))))
    packed[len(packed) // 2] ^= 0xFF          # the deflate stream or its CRC no longer matches
    path = tmp_path / "broken"
    path.write_bytes(bytes(packed))
    with pytest.raises(idx.IdxFormatError, match="broken") as refused:
        idx.read_images(path)
    assert "gzip" in str(refused.value) or "truncated" in str(refused.value)


@pytest.mark.parametrize("what", ["images", "size"])
def test_files_that_do_not_belong_together_are_refused(tmp_path, what):
    write_folder(tmp_path, compress=False)
    if what == "images":       # 39 labels for 40 images
        write(tmp_path / FILES["train_labels"], idx_bytes(np.zeros(39, np.uint8)), False)
        match = "holds 40 images but .*train-labels-idx1-ubyte 39 labels"
    else:                      # test images of another size than the training images
        write(tmp_path / FILES["test_images"], idx_bytes(np.zeros((20, 28, 30), np.uint8)), False)
        match = "28x28 images but .*t10k-images-idx3-ubyte 28x30"
    with pytest.raises(idx.IdxFormatError, match=match):
        fashion_mnist.load_idx_images(tmp_path)


def _peak_bytes(call):
    """(the exception ``call`` raised, peak bytes traced meanwhile): numpy and bytes allocations
    are traced, so an array of the header's claimed size would show here even before its pages
    are touched."""
    tracemalloc.start()
    try:
        call()
    except Exception as error:          # noqa: BLE001 - returned for the caller to check
        raised = error
    else:
        raised = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


@pytest.mark.parametrize("count", [10**9, 100_000])
@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "plain"])
def test_a_huge_claim_in_a_small_file_is_refused_without_allocating_it(tmp_path, count, compress):
    """A header claiming 10^9 (784 GB) or 10^5 images (78 MB, allocatable) in a file of 3 images:
    refused, and the reader never holds more than ~1 MB (its read chunk)."""
    path = write(tmp_path / "claims", idx_bytes(np.zeros((3, 28, 28), np.uint8), dims=(count, 28, 28)), compress)
    raised, peak = _peak_bytes(lambda: idx.read_images(path))
    assert isinstance(raised, idx.IdxFormatError) and str(path) in str(raised), raised
    assert peak < 4 << 20, f"peak {peak} bytes while refusing a claim of {count} images"


def test_a_gzip_claim_deflate_could_hold_but_the_stream_does_not_allocates_only_what_arrives(tmp_path):
    """200 KB of incompressible bytes under a header claiming 78 MB (within deflate's 1032:1): the
    claim passes the ratio check, so only reading what is there keeps memory small."""
    body = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8)
    path = write(tmp_path / "claims", idx_bytes(body, dims=(100_000, 28, 28)), compress=True)
    raised, peak = _peak_bytes(lambda: idx.read_images(path))
    assert isinstance(raised, idx.IdxFormatError) and "is truncated" in str(raised), raised
    assert "holds 200000" in str(raised)
    assert peak < 4 << 20, f"peak {peak} bytes"


def test_a_gzip_bomb_is_decompressed_no_further_than_the_header_says(tmp_path):
    """Four 28x28 images then 50 MB of zeros, compressed to ~50 KB: refused as trailing data,
    with memory near the 3 KB the header claims, not the 50 MB the stream holds."""
    content = idx_bytes(np.ones((4, 28, 28), np.uint8)) + bytes(50_000_000)
    path = tmp_path / "bomb"
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)     # 31: gzip container
    path.write_bytes(compressor.compress(content) + compressor.flush())
    del content
    assert path.stat().st_size < 100_000
    raised, peak = _peak_bytes(lambda: idx.read_images(path))
    assert isinstance(raised, idx.IdxFormatError) and "has trailing bytes" in str(raised), raised
    assert str(path) in str(raised)
    assert peak < 4 << 20, f"peak {peak} bytes"


def test_a_missing_data_set_says_how_to_install_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as missing:
        fashion_mnist.load_idx_images(tmp_path / "nowhere")
    assert "does not exist" in str(missing.value) and "--data-dir" in str(missing.value)
    write_folder(tmp_path)
    (tmp_path / (FILES["test_labels"] + ".gz")).unlink()
    with pytest.raises(FileNotFoundError, match="lacks t10k-labels-idx1-ubyte"):
        fashion_mnist.load_idx_images(tmp_path)


@pytest.mark.parametrize("problem", ["missing", "malformed"])
def test_cli_refuses_a_bad_folder_with_exit_2_and_no_traceback(tmp_path, capsys, problem):
    folder = tmp_path / "fm"
    if problem == "malformed":
        write_folder(folder)
        write(folder / (FILES["train_labels"] + ".gz"), idx_bytes(np.full(40, 10, np.uint8)), True)
    for command in ("compare", "tune"):
        with pytest.raises(SystemExit) as stopped:
            cli.main([command, "--quick", "--data", "fashion-mnist", "--data-dir", str(folder),
                      "--out", str(tmp_path / command), "--no-progress"])
        err = capsys.readouterr().err
        assert stopped.value.code == 2, err
        assert "Traceback" not in err
        if problem == "missing":
            assert "apt-get install dataset-fashion-mnist" in err and str(folder) in err
        else:
            assert "train-labels-idx1-ubyte.gz: label 10 at index 0" in err
        assert not (tmp_path / command / "config.json").exists()


def test_data_settings_are_checked_and_data_dir_alone_means_cifar10(tmp_path):
    with pytest.raises(ConfigError, match="data must be one of synthetic, cifar10, fashion-mnist"):
        quick_config(data="mnist")
    with pytest.raises(ConfigError, match="needs data_dir"):
        quick_config(data="cifar10")
    args = cli.build_parser().parse_args(["compare", "--data-dir", "rel/dir"])
    config = cli.config_from_args(args, {"data_dir"}, "runs/compare")
    assert config.data == "cifar10" and config.data_dir == os.path.abspath("rel/dir")
    args = cli.build_parser().parse_args(["compare", "--data", "fashion-mnist"])
    config = cli.config_from_args(args, {"data"}, "runs/compare")
    assert config.data == "fashion-mnist" and config.data_dir == fashion_mnist.DEFAULT_DIR
    assert config.train_size is None and config.test_size is None
    args = cli.build_parser().parse_args(["compare", "--data", "synthetic", "--data-dir", "x"])
    with pytest.raises(ConfigError, match="--data synthetic"):
        cli.config_from_args(args, {"data", "data_dir"}, "runs/compare")
    # the field is in the fingerprint only where data_dir does not already imply it
    assert "data" not in quick_config().run_identity()
    assert quick_config(data="fashion-mnist").run_identity()["data"] == "fashion-mnist"


def test_the_one_channel_28x28_set_trains_end_to_end(tmp_path):
    """A tiny Fashion-MNIST folder through load_dataset, the sweep, the three evaluations, the
    mechanism measurement and the report: the network reads one 28x28 channel as it is."""
    write_folder(tmp_path / "fm", n_train=48, n_test=24)
    config = quick_config(data="fashion-mnist", data_dir=str(tmp_path / "fm"), train_size=48, test_size=24,
                          norms=("channel", "group"), norm_batches=(4,), coupled_batches=(4,), seeds=(0, 1),
                          epochs=1.0, precise_size=16, curve_size=16, workers=1, out=str(tmp_path / "out"),
                          width=8)   # not 4: see test_exp_wide on torch's channels_last 1x1 conv at 4 channels
    data = load_dataset(config)
    assert data.image_shape == (1, 28, 28) and data.in_channels == 1
    assert data.source == str(tmp_path / "fm") and "Fashion-MNIST" in data.describe()
    # standardized with the training images' own mean and std (float64 oracle)
    raw = fashion_mnist.load_idx_images(tmp_path / "fm").train_x.double()
    torch.testing.assert_close(data.train_x.double(), (raw - raw.mean()) / raw.std(), rtol=1e-5, atol=1e-5)
    from channelnorm.experiments.pipeline import run_compare
    outputs = run_compare(config, progress=False)
    report = outputs["report.md"].read_text()
    assert "Fashion-MNIST: 48 training and 24 test images, 1x28x28" in report
    import json
    rows = json.loads(outputs["results.json"].read_text())
    assert {r["norm"] for r in rows} == {"channel", "group"}
    for row in rows:   # every error is a count of the 24 test images (the batch evaluation: 6 of 4)
        assert row["seeds"] == [0, 1] and all(0.0 <= e <= 100.0 for e in row["errors"])
        assert all(abs(e * 24 / 100 - round(e * 24 / 100)) < 1e-9 for e in row["errors"])


@pytest.mark.skipif(not INSTALLED.is_dir(), reason="Debian's dataset-fashion-mnist is not installed here")
def test_the_installed_fashion_mnist_reads_with_its_published_counts():
    read = fashion_mnist.load_idx_images(INSTALLED)
    assert read.train_x.shape == (60000, 1, 28, 28) and read.test_x.shape == (10000, 1, 28, 28)
    # the published set is balanced: 6000 training and 1000 test images per class
    assert torch.bincount(read.train_y).tolist() == [6000] * 10
    assert torch.bincount(read.test_y).tolist() == [1000] * 10
    assert 0.0 <= float(read.train_x.min()) and float(read.train_x.max()) <= 1.0


def test_each_data_set_gets_the_thresholds_fixed_for_it_before_any_run():
    parse = cli.build_parser().parse_args
    fashion = cli.config_from_args(parse(["compare", "--data", "fashion-mnist"]), {"data"}, "runs/compare")
    assert (fashion.converged_loss, fashion.target_error) == (0.25, 12.0)
    synthetic = cli.config_from_args(parse(["compare"]), set(), "runs/compare")
    assert (synthetic.converged_loss, synthetic.target_error) == (0.05, 5.0) and synthetic.grid == "default"
    given = cli.config_from_args(parse(["compare", "--data", "fashion-mnist", "--target-error", "9"]),
                                 {"data", "target_error"}, "runs/compare")
    assert (given.converged_loss, given.target_error) == (0.25, 9.0)
    quick = cli.config_from_args(parse(["compare", "--quick", "--data", "fashion-mnist"]), {"quick", "data"}, "x")
    assert (quick.converged_loss, quick.target_error) == (2.0, 80.0)


@pytest.mark.parametrize("size,stride", [(12, 1), (28, 2)])
def test_a_cell_plan_halves_large_images_in_the_stem(size, stride):
    images = torch.zeros(40, 1, size, size)
    data = Dataset("grey", tuple("abcdefghij"), images, torch.zeros(40, dtype=torch.long), images,
                   torch.zeros(40, dtype=torch.long))
    plan = train_plan(Cell("channel", "decoupled", 4, 16), quick_config(), data)
    assert (plan.stem_stride, plan.in_channels) == (stride, 1)
