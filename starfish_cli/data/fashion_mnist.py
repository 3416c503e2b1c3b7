"""Fashion-MNIST as a cached `datasets.Dataset`, from local IDX files or the HF hub."""

import gzip
from pathlib import Path

import numpy as np

SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
HUB_ID = "zalando-datasets/fashion_mnist"
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into an array of its declared shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise ValueError(f"{path} is truncated: expected {int(np.prod(shape))} values")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _find_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def idx_paths(directory: Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files of `split` in `directory`, or None when either is absent."""
    images, labels = (_find_file(Path(directory), stem) for stem in IDX_FILES[split])
    return (images, labels) if images and labels else None


def load_idx_arrays(directory: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 N×28×28, labels int64 N) of one split from a folder of IDX files."""
    paths = idx_paths(directory, split)
    if paths is None:
        raise FileNotFoundError(f"no Fashion-MNIST {split} IDX files in {directory}")
    images, labels = read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} images but {len(labels)} labels")
    return images, labels
