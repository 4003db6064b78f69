"""Offline data sets and deterministic batching. Nothing here ever downloads.

One module per kind of data; this package re-exports their public names, so
``from fdiv import data; data.ring8()`` works without naming the module:

* `fdiv.data.toy`: 2-D toy targets with exact densities and scores (`ring8`, `grid25`,
  `GaussianMixture2D`, `Moons`, `SwissRoll`, `toy_target`; docs/reference.md section 8).
* `fdiv.data.images`: labelled images from local files (`load_digits`, `load_fashion_mnist`,
  `read_idx`, `load_images`, `LabelledImages`).
* `fdiv.data.text`: character corpora (`load_shakespeare`, `load_kjv_bible`, `load_corpus` by
  name from `CORPORA`, `CharCorpus`).
* `fdiv.data.batchers`: batches that are pure functions of (seed, step) (`ArrayBatcher`,
  `TextBatcher`, `epoch_permutation`, `eval_batches`, `shard_batch`).

The package never imports `fdiv.train`: placement on a device mesh (`shard_batch`) lives in
`fdiv.data.batchers`.
"""

from fdiv.data.batchers import (
    DATA_AXIS,
    ArrayBatcher,
    TextBatcher,
    epoch_permutation,
    eval_batches,
    shard_batch,
)
from fdiv.data.images import (
    _FASHION_FILES,  # noqa: F401  (the former module had it)
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    IMAGE_DATASETS,
    LabelledImages,
    _fashion_mnist_dir,  # noqa: F401  (used by tests and configs)
    load_digits,
    load_fashion_mnist,
    load_images,
    read_idx,
)
from fdiv.data.text import (
    CORPORA,
    KJV_INSTALL,
    CharCorpus,
    load_corpus,
    load_kjv_bible,
    load_shakespeare,
)
from fdiv.data.toy import (
    TOY_TARGETS,
    GaussianMixture2D,
    Moons,
    SwissRoll,
    grid25,
    ring8,
    toy_target,
)

__all__ = [
    "CORPORA",
    "DATA_AXIS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DIR",
    "IMAGE_DATASETS",
    "KJV_INSTALL",
    "TOY_TARGETS",
    "ArrayBatcher",
    "CharCorpus",
    "GaussianMixture2D",
    "LabelledImages",
    "Moons",
    "SwissRoll",
    "TextBatcher",
    "epoch_permutation",
    "eval_batches",
    "grid25",
    "load_corpus",
    "load_digits",
    "load_fashion_mnist",
    "load_images",
    "load_kjv_bible",
    "load_shakespeare",
    "read_idx",
    "ring8",
    "shard_batch",
    "toy_target",
]
