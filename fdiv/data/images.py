"""Labelled image data sets read from local files; nothing here downloads.

`load_digits()`: scikit-learn's bundled 8x8 digits, ``[N, 8, 8, 1]`` in [-1, 1].
`load_fashion_mnist()`: Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (IDX
files, read by `read_idx`), ``[N, 28, 28, 1]`` in [-1, 1]. `load_images(name)` looks either up
in `IMAGE_DATASETS`. Both return ``{"train": LabelledImages, "test": LabelledImages}``.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import struct
import subprocess
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class LabelledImages:
    """Images float32 [N, H, W, C] in [-1, 1] and labels int32 [N]."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self):
        if self.images.ndim != 4 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                "LabelledImages: images [N, H, W, C] and labels [N] expected, got "
                f"{self.images.shape} and {self.labels.shape}."
            )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """``{"image": images, "label": labels}`` for `fdiv.data.ArrayBatcher`."""
        return {"image": self.images, "label": self.labels}


def load_digits(test_fraction: float = 0.2, split_seed: int = 0) -> dict[str, LabelledImages]:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    Pixel values 0..16 are mapped to [-1, 1] by x / 8 - 1. The train/test split is a fixed
    permutation from `split_seed`.

    Returns:
      ``{"train": LabelledImages, "test": LabelledImages}``, images float32 [N, 8, 8, 1].

    References:
      Alpaydin and Kaynak 1998, "Optical recognition of handwritten digits" (UCI); the copy
      bundled with scikit-learn (`sklearn.datasets.load_digits`).
    """
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as e:
        raise ImportError("load_digits needs scikit-learn: pip install scikit-learn") from e
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_digits: test_fraction must lie in (0, 1), got {test_fraction}.")
    raw = _load()
    images = (raw.data.reshape(-1, 8, 8, 1) / 8.0 - 1.0).astype(np.float32)
    labels = raw.target.astype(np.int32)
    perm = np.random.default_rng(split_seed).permutation(len(labels))
    n_test = round(test_fraction * len(labels))
    test, train = perm[:n_test], perm[n_test:]
    return {
        "train": LabelledImages(images[train], labels[train], 10),
        "test": LabelledImages(images[test], labels[test], 10),
    }


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _fashion_mnist_dir() -> str:
    """Directory of the IDX files: from ``dpkg -L dataset-fashion-mnist``, else the default path."""
    try:
        out = subprocess.run(
            ["dpkg", "-L", "dataset-fashion-mnist"],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
        for line in out.splitlines():
            if line.strip().endswith(_FASHION_FILES["train"][0]):
                return os.path.dirname(line.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return FASHION_MNIST_DIR


def read_idx(path: str) -> np.ndarray:
    """Reads a (gzipped) IDX file (the MNIST format) into a numpy array.

    Raises:
      ValueError: if the magic number or the size does not match the format.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number).")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}.")
    ndim = data[3]
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(
            f"{path}: header says shape {shape} but holds {arr.size} elements (truncated?)."
        )
    return arr.reshape(shape)


def load_fashion_mnist(data_dir: str | None = None) -> dict[str, LabelledImages]:
    """Fashion-MNIST (60000 train, 10000 test, 10 classes) from local IDX files.

    Args:
      data_dir: directory with the four ``*-ubyte.gz`` files; default: where the Debian package
        ``dataset-fashion-mnist`` put them (found with ``dpkg -L``), else
        ``/usr/share/datasets/fashion-mnist``.

    Returns:
      ``{"train": LabelledImages, "test": LabelledImages}``, images float32 [N, 28, 28, 1]
      in [-1, 1] (x / 127.5 - 1).

    Raises:
      FileNotFoundError: when the files are missing (the message says what to install).

    References:
      Xiao, Rasul and Vollgraf 2017, "Fashion-MNIST: a novel image dataset for benchmarking
      machine learning algorithms", arXiv:1708.07747.
    """
    data_dir = data_dir or _fashion_mnist_dir()
    out = {}
    for split, (img_name, lbl_name) in _FASHION_FILES.items():
        img_path, lbl_path = os.path.join(data_dir, img_name), os.path.join(data_dir, lbl_name)
        for p in (img_path, lbl_path):
            if not os.path.exists(p):
                raise FileNotFoundError(
                    f"Fashion-MNIST file {p} not found. Install the data with "
                    "`apt-get install dataset-fashion-mnist` (files land in "
                    f"{FASHION_MNIST_DIR}) or pass data_dir= pointing at the IDX .gz files."
                )
        images = read_idx(img_path)
        labels = read_idx(lbl_path)
        images = (images.astype(np.float32) / 127.5 - 1.0)[..., None]
        out[split] = LabelledImages(images, labels.astype(np.int32), 10)
    return out


IMAGE_DATASETS = {
    "digits": load_digits,
    "fashion_mnist": load_fashion_mnist,
}


def load_images(name: str, **kwargs: Any) -> dict[str, LabelledImages]:
    """Image data set `name` (``digits``, ``fashion_mnist``) as ``{"train": ..., "test": ...}``."""
    if name not in IMAGE_DATASETS:
        raise ValueError(f"unknown image data set {name!r}; available: {sorted(IMAGE_DATASETS)}.")
    return IMAGE_DATASETS[name](**kwargs)
