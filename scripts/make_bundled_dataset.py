"""Rebuild compress/bundled/fashion-mnist-subset.npz: a stratified, seeded subset of Fashion-MNIST (MIT licence).

    python scripts/make_bundled_dataset.py ../shared/data/fashion-mnist
"""
import sys
from pathlib import Path

import numpy as np

from compress.data import IDX_FILES, find_idx, read_idx

TRAIN_PER_CLASS, TEST_PER_CLASS, SEED = 800, 100, 0


def stratified(x: np.ndarray, y: np.ndarray, per_class: int, rng: np.random.Generator):
    keep = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in range(10)])
    keep = rng.permutation(keep)
    return x[keep], y[keep]


def main(source: Path) -> None:
    rng = np.random.default_rng(SEED)
    out = {}
    for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        images, labels = (read_idx(find_idx(source, stem)) for stem in IDX_FILES[split])
        out[f"x_{split}"], out[f"y_{split}"] = stratified(images, labels.astype(np.uint8), per_class, rng)
    target = Path(__file__).resolve().parents[1] / "compress" / "bundled" / "fashion-mnist-subset.npz"
    np.savez_compressed(target, **out)
    print(f"wrote {target} ({target.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
