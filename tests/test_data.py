import gzip

import numpy as np
import pytest
import torch

from compress.config import DataConfig
from compress.data import BatchLoader, load_data, read_idx
from compress.errors import DataError


def write_idx(path, array: np.ndarray, compress: bool = True):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if compress else open)(path, "wb").write(data)


def make_idx_dataset(folder, n=40, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if compress else ""
    for split, count in (("train", n), ("t10k", n // 2)):
        write_idx(folder / f"{split}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (count, 28, 28)), compress)
        write_idx(folder / f"{split}-labels-idx1-ubyte{suffix}", np.arange(count) % 10, compress)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_dataset_from_root(tmp_path, compress):
    make_idx_dataset(tmp_path / "fm", compress=compress)
    bundle = load_data(DataConfig(dataset="fashion-mnist", root=tmp_path / "fm", val_fraction=0.25), seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (30, 10, 20)
    assert bundle.input_shape == (1, 28, 28) and bundle.num_classes == 10


def test_idx_dataset_from_env(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "mnist")
    monkeypatch.setenv("COMPRESS_DATA", str(tmp_path))
    assert len(load_data(DataConfig(dataset="mnist"), seed=0).test) == 20


def test_missing_dataset_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPRESS_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DataError) as e:
        load_data(DataConfig(dataset="mnist", root=tmp_path / "root"), seed=0)
    message = str(e.value)
    for place in (tmp_path / "root", tmp_path / "env" / "mnist", tmp_path / "home" / ".cache" / "compress" / "mnist"):
        assert str(place) in message
    assert "train-images-idx3-ubyte" in message


def test_unknown_dataset_suggests():
    with pytest.raises(DataError, match="did you mean 'fashion-mnist'"):
        load_data(DataConfig(dataset="fashion-mnst"), seed=0)


@pytest.mark.parametrize("payload, words", [
    (b"\x00\x00\x0d\x01\x00\x00\x00\x02ab", "bad magic number"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x09ab", "truncated IDX file"),
])
def test_corrupt_idx(tmp_path, payload, words):
    path = tmp_path / "x-idx1-ubyte"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=words):
        read_idx(path)


def test_npz_dataset_and_errors(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((20, 3, 8, 8), np.float32), y_train=np.arange(20) % 4)
    bundle = load_data(DataConfig(dataset="npz", path=path, val_fraction=0.2), seed=0)
    assert bundle.in_channels == 3 and bundle.num_classes == 4 and bundle.test is None
    np.savez(path, x_train=np.zeros((20, 8)), y_train=np.arange(20))
    with pytest.raises(DataError, match="expected shape"):
        load_data(DataConfig(dataset="npz", path=path), seed=0)
    np.savez(path, images=np.zeros((20, 8, 8)))
    with pytest.raises(DataError, match="missing arrays"):
        load_data(DataConfig(dataset="npz", path=path), seed=0)
    with pytest.raises(DataError, match="data.path: required"):
        load_data(DataConfig(dataset="npz"), seed=0)


def test_npz_with_objects_is_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, x_train=np.array([object()], dtype=object), y_train=np.arange(1))
    with pytest.raises(DataError, match="not a readable npz"):
        load_data(DataConfig(dataset="npz", path=path), seed=0)


def test_bundled_subset_is_stratified_and_normalised():
    bundle = load_data(DataConfig(), seed=0)
    assert len(bundle.train) + len(bundle.val) == 8000 and len(bundle.test) == 1000
    assert torch.bincount(bundle.test.y).tolist() == [100] * 10
    assert abs(float(bundle.train.x.mean())) < 0.01 and abs(float(bundle.train.x.std()) - 1) < 0.01


def test_limit_and_calibration(tiny_data):
    assert len(tiny_data.train) == len(tiny_data.val) == 256 and len(tiny_data.calibration) == 64


def test_split_is_seeded(tiny_data):
    again = load_data(DataConfig(dataset="bundled", limit=256, calibration_size=64), seed=0)
    other = load_data(DataConfig(dataset="bundled", limit=256, calibration_size=64), seed=1)
    assert torch.equal(again.train.y, tiny_data.train.y) and not torch.equal(other.train.y, tiny_data.train.y)


def test_loader_shuffles_per_epoch_and_shards(tiny_data):
    loader = BatchLoader(tiny_data.train, 100, shuffle=True, seed=3)
    first = torch.cat([b.index for b in loader])
    loader.set_epoch(1)
    second = torch.cat([b.index for b in loader])
    assert sorted(first.tolist()) == list(range(256)) and not torch.equal(first, second)
    shards = [torch.cat([b.index for b in BatchLoader(tiny_data.train, 50, True, 3, rank=r, world_size=3)]) for r in range(3)]
    assert len({len(s) for s in shards}) == 1 and set(torch.cat(shards).tolist()) == set(range(256))


def test_augmentation_keeps_shape_and_changes_pixels(tiny_data):
    plain = next(iter(BatchLoader(tiny_data.train, 16)))
    shifted = next(iter(BatchLoader(tiny_data.train, 16, augment=True)))
    assert shifted.x.shape == plain.x.shape and not torch.equal(shifted.x, plain.x)
    padded = torch.nn.functional.pad(plain.x, (2, 2, 2, 2), mode="replicate")
    offsets = [next((dy, dx) for dy in range(5) for dx in range(5) if torch.equal(shifted.x[i], padded[i, :, dy:dy + 28, dx:dx + 28]))
               for i in range(16)]  # every image is its own, shifted by at most 2 pixels with edge fill
    assert len(set(offsets)) > 1


def test_big_endian_arrays_are_read_in_native_order(tmp_path):
    path = tmp_path / "be.npz"
    np.savez(path, x_train=np.full((40, 28, 28), 0.5, ">f4"), y_train=(np.arange(40) % 10).astype(">i8"))
    data = load_data(DataConfig(dataset="npz", path=path), seed=0)
    assert data.num_classes == 10 and set(data.train.y.tolist()) | set(data.val.y.tolist()) == set(range(10))
    assert data.mean == pytest.approx(0.5) and float(data.train.x.abs().max()) < 1e-3  # 0.5 everywhere, normalised
