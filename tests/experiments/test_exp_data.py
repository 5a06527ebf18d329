"""The data of ``channelnorm compare``: the synthetic set and the CIFAR-10 reader."""
import pickle

import numpy as np
import pytest
import torch

from channelnorm.experiments import cifar, synthetic
from channelnorm.experiments.config import quick_config
from channelnorm.experiments.data import load_dataset


def test_synthetic_is_deterministic_by_seed_and_differs_across_seeds():
    a_x, a_y = synthetic.make_images(120, 16, seed=3)
    b_x, b_y = synthetic.make_images(120, 16, seed=3)
    c_x, c_y = synthetic.make_images(120, 16, seed=4)
    assert torch.equal(a_x, b_x) and torch.equal(a_y, b_y)
    assert not torch.equal(a_x, c_x)
    assert not torch.equal(a_y, c_y)


def test_synthetic_shape_dtype_range_and_label_balance():
    x, y = synthetic.make_images(205, 12, seed=0)
    assert x.shape == (205, 3, 12, 12) and x.dtype == torch.float32
    assert y.shape == (205,) and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    counts = np.bincount(y.numpy(), minlength=10)
    assert counts.tolist() == [21] * 5 + [20] * 5      # 205 = 20 per class, the 5 extra to the first classes
    assert len(synthetic.CLASSES) == 10


@pytest.mark.parametrize("u, v, inside", [
    # classes: disk square ring frame plus x triangle h_stripes v_stripes checker
    (0.0, 0.0, [1, 1, 0, 0, 1, 1, 1, 1, 1, 1]),      # centre: filled shapes and the textures' first band
    (0.95, 0.95, [0, 0, 0, 1, 0, 1, 0, 1, 1, 1]),    # box corner: frame, the X's diagonal, the textures' 2nd band
    (0.0, 0.9, [1, 0, 1, 1, 1, 0, 0, 1, 1, 1]),      # below centre: outside the square and triangle, off the X
    (0.6, 0.0, [1, 1, 1, 1, 1, 0, 0, 1, 0, 0]),      # right: plus's arm, ring band, past the triangle's slope
])
def test_class_masks_at_hand_checked_points(u, v, inside):
    # period 0.5: horizontal stripes are cos(2 pi v) > 0, vertical cos(2 pi u) > 0 (hand-evaluated above)
    labels = torch.arange(10)
    grid_u = torch.full((10, 1, 1), u)
    grid_v = torch.full((10, 1, 1), v)
    period = torch.full((10, 1, 1), 0.5)
    masks = synthetic._shape_masks(labels, grid_u, grid_v, period)
    assert masks.flatten().tolist() == [float(b) for b in inside]


def test_dataset_is_standardized_and_test_images_differ_from_training_images():
    config = quick_config(train_size=200, test_size=100)
    data = load_dataset(config)
    assert data.train_x.shape == (200, 3, 12, 12) and data.test_x.shape == (100, 3, 12, 12)
    mean = data.train_x.mean(dim=(0, 2, 3))
    std = data.train_x.std(dim=(0, 2, 3))
    torch.testing.assert_close(mean, torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(std, torch.ones(3), atol=1e-5, rtol=0)
    distances = torch.cdist(data.test_x.flatten(1), data.train_x.flatten(1))
    assert float(distances.min()) > 1.0


def _write_cifar(directory, per_file=4, seed=0):
    """A tiny CIFAR-10 in the real python format: pickled dicts with bytes keys."""
    rng = np.random.default_rng(seed)
    written = {}
    for name in cifar.TRAIN_FILES + (cifar.TEST_FILE,):
        data = rng.integers(0, 256, size=(per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=per_file).tolist()
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": data,
                 b"filenames": [f"img{i}.png".encode() for i in range(per_file)]}
        with open(directory / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
        written[name] = (data, labels)
    return written


def test_cifar_reader_matches_the_format_pixel_by_pixel(tmp_path):
    written = _write_cifar(tmp_path)
    train_x, train_y, test_x, test_y = cifar.load_cifar10(tmp_path)
    assert train_x.shape == (20, 3, 32, 32) and test_x.shape == (4, 3, 32, 32)
    assert train_x.dtype == torch.float32 and train_y.dtype == torch.int64
    data, labels = written["data_batch_3"]
    # row layout: 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    for image, channel, row, col in [(0, 0, 0, 0), (1, 1, 5, 7), (3, 2, 31, 30), (2, 0, 17, 3)]:
        expected = data[image, channel * 1024 + row * 32 + col] / 255.0
        assert float(train_x[8 + image, channel, row, col]) == pytest.approx(expected)
    assert train_y[8:12].tolist() == labels
    assert test_y.tolist() == written["test_batch"][1]


def test_cifar_reader_names_missing_files_and_rejects_bad_content(tmp_path):
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_4"):
        cifar.load_cifar10(tmp_path)
    with open(tmp_path / "data_batch_4", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 3072), dtype=np.float32), b"labels": [0, 1]}, handle)
    with pytest.raises(ValueError, match="uint8"):
        cifar.load_cifar10(tmp_path)
    with open(tmp_path / "data_batch_4", "wb") as handle:
        pickle.dump([1, 2, 3], handle)
    with pytest.raises(ValueError, match="not a CIFAR-10"):
        cifar.load_cifar10(tmp_path)


def test_load_dataset_reads_cifar_with_a_subset(tmp_path):
    _write_cifar(tmp_path, per_file=6)
    data = load_dataset(quick_config(data_dir=str(tmp_path), train_size=24, test_size=None))
    assert data.train_x.shape == (24, 3, 32, 32) and data.test_x.shape == (6, 3, 32, 32)
    assert "CIFAR-10" in data.name and data.classes[0] == "airplane"


class _RunsCode:
    """What an attacker pickles: unpickling it calls os.system (here: touch a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return os.system, (f"touch {self.marker}",)


class _Evaluates:
    def __reduce__(self):
        return eval, ("__import__('os').getpid()",)


@pytest.mark.parametrize("payload", ["system", "eval", "object_array", "subclass"])
def test_cifar_reader_runs_no_code_from_a_crafted_file(tmp_path, capsys, payload):
    _write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    data = np.zeros((4, 3072), dtype=np.uint8)
    crafted = {
        "system": {b"data": data, b"labels": [0, 1, 2, 3], b"filenames": _RunsCode(marker)},
        "eval": {b"data": data, b"labels": _Evaluates()},
        "object_array": {b"data": np.array([_RunsCode(marker)], dtype=object), b"labels": [0]},
        "subclass": {b"data": np.ma.masked_array(data), b"labels": [0, 1, 2, 3]},
    }[payload]
    with open(tmp_path / "data_batch_2", "wb") as handle:
        pickle.dump(crafted, handle, protocol=2)
    with pytest.raises(cifar.UnsafeDataError, match="data_batch_2"):
        cifar.load_cifar10(tmp_path)
    assert not marker.exists()
    # the same file through the command line is a clear one-line error, and nothing ran
    from channelnorm.experiments.cli import main
    with pytest.raises(SystemExit) as stopped:
        main(["compare", "--quick", "--data-dir", str(tmp_path), "--out", str(tmp_path / "out")])
    assert stopped.value.code == 2 and "data_batch_2 was refused" in capsys.readouterr().err
    assert not marker.exists()
    if payload == "system":  # the file is a real exploit: plain pickle would have run it
        with open(tmp_path / "data_batch_2", "rb") as handle:
            pickle.load(handle, encoding="bytes")
        assert marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_reader_accepts_every_pickle_protocol_numpy_writes(tmp_path, protocol):
    written = _write_cifar(tmp_path)
    data, labels = written["test_batch"]
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump({b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": data,
                     b"filenames": [b"a.png"] * len(labels)}, handle, protocol=protocol)
    test_x, test_y = cifar.load_cifar10(tmp_path)[2:]
    assert torch.equal((test_x * 255).round().to(torch.uint8).flatten(1), torch.from_numpy(data))
    assert test_y.tolist() == labels


# ---- issue 19 item 4: arrays only from the file's own bytes, bounded memory ----

class _BareArray:
    """Pickles as numpy's ``_reconstruct(ndarray, shape, dtype)`` with no BUILD step after it: the
    array's data never comes. Before the fix, this returned ``np.empty`` memory as images."""

    def __init__(self, shape):
        self.shape = shape

    def __reduce__(self):
        from numpy._core.multiarray import _reconstruct
        return _reconstruct, (np.ndarray, self.shape, b"B")


class _WrongLengthArray(_BareArray):
    """``_reconstruct`` then a state whose bytes do not fill the shape it names."""

    def __reduce__(self):
        return super().__reduce__() + ((1, self.shape, np.dtype(np.uint8), False, b"\x00" * 10),)


@pytest.mark.parametrize("where", ["data", "labels", "filenames"])
def test_cifar_reader_refuses_an_array_that_never_receives_its_data(tmp_path, where):
    _write_cifar(tmp_path)
    batch = {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3], b"filenames": []}
    batch[where.encode()] = _BareArray((4, 3072) if where == "data" else (4,))
    with open(tmp_path / "data_batch_3", "wb") as handle:
        pickle.dump(batch, handle, protocol=2)
    with pytest.raises(cifar.UnsafeDataError, match="data_batch_3 was refused: an array was rebuilt without its data"):
        cifar.load_cifar10(tmp_path)


@pytest.mark.parametrize("protocol", [2, 4])
def test_cifar_reader_refuses_array_data_of_the_wrong_length(tmp_path, protocol):
    _write_cifar(tmp_path)
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump({b"data": _WrongLengthArray((4, 3072)), b"labels": [0, 1, 2, 3]}, handle, protocol=protocol)
    with pytest.raises(cifar.UnsafeDataError, match="test_batch was refused: .* needs 12288 bytes of data, the "
                                                    "file gives 10"):
        cifar.load_cifar10(tmp_path)


def _traced_peak(call):
    """(exception raised or None, peak bytes of numpy and Python allocations while ``call`` ran)."""
    import tracemalloc
    tracemalloc.start()
    try:
        call()
        raised = None
    except Exception as error:     # noqa: BLE001 - returned for the caller to check
        raised = error
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


def test_cifar_reader_never_expands_shared_nested_lists(tmp_path):
    """b'data' as 2000 references to one list of 3072 ints: a 10 KB file that np.asarray expands to
    49 MB of int64. It is refused as not an array, with memory near the file's size."""
    _write_cifar(tmp_path)
    row = [0] * 3072
    with open(tmp_path / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": [row] * 2000, b"labels": [0] * 2000}, handle, protocol=2)
    assert (tmp_path / "data_batch_1").stat().st_size < 20_000
    raised, peak = _traced_peak(lambda: cifar.load_cifar10(tmp_path))
    assert isinstance(raised, ValueError) and "b'data' must be a uint8 numpy array" in str(raised), raised
    assert "data_batch_1" in str(raised) and "got list" in str(raised)
    assert peak < 2 << 20, f"peak {peak} bytes"


def test_cifar_reader_checks_the_label_count_before_the_labels(tmp_path):
    _write_cifar(tmp_path)
    with open(tmp_path / "data_batch_1", "wb") as handle:
        pickle.dump({b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": [[0]] * 5}, handle, protocol=2)
    with pytest.raises(ValueError, match="data_batch_1: 4 images but 5 labels"):
        cifar.load_cifar10(tmp_path)


def test_cifar_reader_caps_the_images_of_a_folder(tmp_path, monkeypatch):
    """At most MAX_IMAGES images (CIFAR-10's 60000) in all files together; a cap of 20 here, with
    six files of 4 images: the sixth file crosses it."""
    _write_cifar(tmp_path)
    monkeypatch.setattr(cifar, "MAX_IMAGES", 20)
    with pytest.raises(ValueError, match="test_batch: the folder holds more than 20 images"):
        cifar.load_cifar10(tmp_path)
    monkeypatch.setattr(cifar, "MAX_IMAGES", 3)       # one file alone over the cap
    with pytest.raises(ValueError, match="data_batch_1: 4 images; a CIFAR-10 folder holds at most 3"):
        cifar.load_cifar10(tmp_path)


def test_cifar_float_conversion_stays_within_the_stated_bound(tmp_path):
    """Peak memory of load_cifar10 (numpy and Python allocations, traced) within the bound the
    module states: max(5 bytes per pixel of the folder (uint8 kept + float32 result), 1 per pixel
    of the folder + 3 per pixel of the largest file (protocol-2 text, bytes, array)) + 1 MB. One
    large file (1200 images) and five small ones; converting file by file (astype, then / 255)
    traced 8.9 bytes per pixel here (and torch.cat, not traced, added 4 more)."""
    rng = np.random.default_rng(0)
    sizes = {name: 4 for name in cifar.TRAIN_FILES} | {cifar.TEST_FILE: 1200}
    written = {}
    for name, n in sizes.items():
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n).tolist()
        with open(tmp_path / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels}, handle, protocol=2)
        written[name] = data
    pixels = sum(sizes.values()) * 3072
    result = []
    raised, peak = _traced_peak(lambda: result.append(cifar.load_cifar10(tmp_path)))
    assert raised is None, raised
    bound = max(5 * pixels, pixels + 3 * 1200 * 3072) + (1 << 20)
    assert peak <= bound, f"peak {peak} bytes, bound {bound}"
    train_x, train_y, test_x, test_y = result[0]
    # the values: float64 oracle of uint8 / 255, rounded once to float32
    expected = torch.from_numpy(written[cifar.TEST_FILE].astype(np.float64) / 255.0).float().view(-1, 3, 32, 32)
    assert torch.equal(test_x, expected) and train_x.shape == (20, 3, 32, 32)
