"""Datasets: bundled Fashion-MNIST subset, MNIST/Fashion-MNIST IDX files, user npz arrays; splits and batch loaders."""
from __future__ import annotations

import gzip
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import numpy as np
import torch

from .config import DataConfig
from .errors import DataError
from .registry import Registry

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DATASETS: Registry = Registry("dataset")  # name -> function(DataConfig) -> dict of numpy arrays
BUNDLED_FILE = "fashion-mnist-subset.npz"
MAX_CLASSES = 100_000  # a label past this is a corrupt file, not a class


class Batch(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor  # positions in the split, for per-example caches (e.g. teacher targets)


@dataclass
class Split:
    x: torch.Tensor  # float32 (N, C, H, W), normalised
    y: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: Optional[int]) -> "Split":
        return self if n is None else Split(self.x[:n], self.y[:n])

    def of_classes(self, classes: list[int]) -> "Split":
        """The examples of `classes`, labelled by their position in `classes` (what a class-subset head predicts)."""
        size = max([*classes, int(self.y.max()) if len(self.y) else 0]) + 1
        position = torch.full((size,), -1, dtype=torch.long)
        position[torch.tensor(classes, dtype=torch.long)] = torch.arange(len(classes))
        keep = position[self.y] >= 0
        return Split(self.x[keep], position[self.y[keep]])


@dataclass
class DataBundle:
    """The splits of one dataset plus what a model and an exporter need to know about the input."""

    name: str
    train: Split
    val: Split
    test: Optional[Split]
    calibration: Split
    num_classes: int
    mean: float
    std: float

    def for_spec(self, spec) -> "DataBundle":
        """The data a model of `spec` is measured on: all of it, or the examples of the classes its head predicts."""
        classes = spec.classes
        if classes is None:
            return self
        cut = lambda s: s.of_classes(classes)  # noqa: E731
        return replace(self, train=cut(self.train), val=cut(self.val), test=None if self.test is None else cut(self.test),
                       calibration=cut(self.calibration), num_classes=len(classes))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])

    @property
    def in_channels(self) -> int:
        return self.input_shape[0]


class BatchLoader:
    """Iterates a `Split` in batches; shuffles with a seeded generator per epoch and shards across DDP ranks."""

    def __init__(self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0,
                 augment: bool = False, rank: int = 0, world_size: int = 1):
        self.split, self.batch_size, self.shuffle, self.seed = split, batch_size, shuffle, seed
        self.augment, self.rank, self.world_size = augment, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the shuffle order for `epoch` (the same on every rank)."""
        self.epoch = epoch

    def indices(self) -> torch.Tensor:
        n = len(self.split)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1000003 + self.epoch))
        else:
            order = torch.arange(n)
        if self.world_size > 1:  # pad so every rank gets the same number of examples, as DistributedSampler does
            per_rank = -(-n // self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - n]])[self.rank :: self.world_size]
        return order

    def __len__(self) -> int:
        return -(-len(self.indices()) // self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        generator = torch.Generator().manual_seed(self.seed * 7919 + self.epoch + 1)
        for chunk in self.indices().split(self.batch_size):
            x = self.split.x[chunk]
            if self.augment:
                x = random_shift(x, 2, generator)
            yield Batch(x, self.split.y[chunk], chunk)


def random_shift(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `pad` pixels in each direction, filling with the edge values."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy, dx = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]  # one gather


def load_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Load the configured dataset and split it into train / val / test / calibration."""
    try:
        read = DATASETS.get(cfg.dataset)
    except KeyError as e:
        raise DataError(f"data.dataset: {e}") from None
    return make_splits(cfg, read(cfg), seed)


@DATASETS.register("bundled")
def read_bundled(cfg: DataConfig) -> dict[str, np.ndarray]:
    """The stratified Fashion-MNIST subset shipped inside the package (offline quickstart)."""
    return read_npz(resources.files("compress") / "bundled" / BUNDLED_FILE)


@DATASETS.register("npz")
def read_user_npz(cfg: DataConfig) -> dict[str, np.ndarray]:
    """User arrays: x_train, y_train and optionally x_test, y_test."""
    if cfg.path is None:
        raise DataError("data.path: required for dataset 'npz' (an .npz file with x_train, y_train[, x_test, y_test])")
    return read_npz(cfg.path)


def make_splits(cfg: DataConfig, arrays: dict[str, np.ndarray], seed: int) -> DataBundle:
    """Normalise with training statistics, hold out a validation share, pick a calibration subset."""
    where = str(cfg.path) if cfg.dataset == "npz" else f"dataset '{cfg.dataset}'"
    x, y = labelled(arrays, "train", where)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(len(y) * cfg.val_fraction)))
    if len(y) - n_val < 1:
        raise DataError(f"data: {len(y)} training examples are too few for val_fraction {cfg.val_fraction}")
    val_idx, train_idx = order[:n_val], order[n_val:]
    mean, std = float(x[train_idx].mean()), float(x[train_idx].std().clamp_min(1e-6))
    norm = lambda t: (t - mean) / std  # noqa: E731
    train = Split(norm(x[train_idx]), y[train_idx]).head(cfg.limit)
    val = Split(norm(x[val_idx]), y[val_idx]).head(cfg.limit)
    num_classes = int(y.max()) + 1
    test = None
    if "x_test" in arrays:
        x_test, y_test = labelled(arrays, "test", where)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(f"{where}: x_test images have shape {tuple(x_test.shape[1:])} (C, H, W), the training images "
                            f"{tuple(x.shape[1:])}; both splits need the same image shape and channel count")
        if len(y_test) and int(y_test.max()) >= num_classes:
            raise DataError(f"{where}: y_test has label {int(y_test.max())}, but the training labels stop at {num_classes - 1}")
        test = Split(norm(x_test), y_test).head(cfg.limit)
    return DataBundle(cfg.dataset, train, val, test, train.head(cfg.calibration_size), num_classes, mean, std)


def labelled(arrays: dict[str, np.ndarray], split: str, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of one split, as tensors, with as many labels as images."""
    x, y = as_images(arrays[f"x_{split}"], f"{where}: x_{split}"), as_labels(arrays[f"y_{split}"], f"{where}: y_{split}")
    if len(x) != len(y):
        raise DataError(f"{where}: x_{split} has {len(x)} examples but y_{split} has {len(y)}")
    return x, y


def as_images(a: np.ndarray, name: str) -> torch.Tensor:
    """(N,H,W) or (N,C,H,W) array of real numbers -> float32 tensor, in [0,1] for uint8 input, as-is otherwise."""
    if a.dtype.kind not in "buif":
        raise DataError(f"{name}: expected images of real numbers (uint8 or float), got dtype {a.dtype}")
    if a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise DataError(f"{name}: expected shape (N, H, W) or (N, C, H, W), got {a.shape}")
    if 0 in a.shape[1:]:
        raise DataError(f"{name}: images of shape {a.shape[1:]} (C, H, W) hold no pixels")
    t = torch.from_numpy(np.ascontiguousarray(native(a)))
    return t.float() / 255.0 if a.dtype == np.uint8 else t.float()


def native(a: np.ndarray) -> np.ndarray:
    """`a` in this machine's byte order (torch takes no other)."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def as_labels(a: np.ndarray, name: str) -> torch.Tensor:
    """A 1-D array of class indices in [0, MAX_CLASSES) -> int64 tensor (checked before conversion, so nothing wraps)."""
    if a.ndim != 1 or a.dtype.kind not in "iu" or (a.size and (a.min() < 0 or a.max() >= MAX_CLASSES)):
        in_range = a.ndim == 1 and a.size and a.dtype.kind in "iu"
        got = f"values {a.min()} to {a.max()}" if in_range else f"{a.dtype} of shape {a.shape}"
        raise DataError(f"{name}: expected a 1-D array of integer class labels from 0 to {MAX_CLASSES - 1:,}, got {got}")
    return torch.from_numpy(native(a).astype(np.int64))


def read_npz(path) -> dict[str, np.ndarray]:
    """Arrays from an npz file, never unpickling objects."""
    if not Path(path).is_file():
        raise DataError(f"{path}: npz file not found" if not Path(path).exists() else f"{path}: not a regular file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (AttributeError, TypeError):  # np.load gave one array: an .npy file, not an npz archive
        raise DataError(f"{path}: an .npy array, not an .npz archive; save x_train, y_train with np.savez") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable npz file of plain arrays ({e})") from None
    missing = {"x_train", "y_train"} - arrays.keys()
    if missing:
        raise DataError(f"{path}: missing arrays {sorted(missing)}; found {sorted(arrays)}")
    if len({"x_test", "y_test"} & arrays.keys()) == 1:
        only = "x_test" if "x_test" in arrays else "y_test"
        raise DataError(f"{path}: has {only} but not the other test array; give both x_test and y_test, or neither")
    return arrays


def search_dirs(name: str, root: Optional[Path]) -> list[Path]:
    """Where an IDX dataset is looked for, in order."""
    dirs = [root] if root else []
    if os.environ.get("COMPRESS_DATA"):
        dirs.append(Path(os.environ["COMPRESS_DATA"]) / name)
    dirs += [Path.home() / ".cache" / "compress" / name, Path("/usr/share/datasets") / name]
    return dirs


def find_idx(directory: Path, stem: str) -> Optional[Path]:
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


@DATASETS.register("fashion-mnist")
@DATASETS.register("mnist")
def read_idx_dataset(cfg: DataConfig) -> dict[str, np.ndarray]:
    """Find and read the four IDX files of MNIST or Fashion-MNIST."""
    name, root = cfg.dataset, cfg.root
    dirs = search_dirs(name, root)
    for directory in dirs:
        images = find_idx(directory, IDX_FILES["train"][0])
        if images is None:
            continue
        arrays = {}
        for split, (img_stem, lbl_stem) in IDX_FILES.items():
            img, lbl = find_idx(directory, img_stem), find_idx(directory, lbl_stem)
            if img is None or lbl is None:
                if split == "train":
                    raise DataError(f"{directory}: has {images.name} but not {lbl_stem}[.gz]")
                continue
            arrays[f"x_{split}"], arrays[f"y_{split}"] = read_idx(img), read_idx(lbl)
        return arrays
    looked = "\n  ".join(str(d) for d in dirs)
    raise DataError(
        f"dataset {name!r} not found: no {IDX_FILES['train'][0]}[.gz] in any of\n  {looked}\n"
        f"Put the IDX files in one of these folders, set data.root, or set $COMPRESS_DATA."
    )


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (raw or gzip) of unsigned bytes."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a gzip stream damaged inside
        raise DataError(f"{path}: cannot read IDX file ({e}); copy the file again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) - header != math.prod(shape):
        raise DataError(f"{path}: truncated IDX file: header says {shape}, found {len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()
