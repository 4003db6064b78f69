"""Small image classifier (CNN or MLP) whose penultimate layer serves as a feature space.

Used by ``experiments/classifier.py`` to classify 8x8 digits or 28x28 Fashion-MNIST and, once
trained, as the feature extractor of Frechet distances between image sets (DESIGN.md,
"Measuring": a Frechet distance in the features of a classifier trained on the same data).
"""

from __future__ import annotations

import jax
from flax import nnx

Array = jax.Array


def _avg_pool2(x: Array) -> Array:
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


class Classifier(nnx.Module):
    """Image classifier: ``logits = head(features(x))``.

    ``kind="cnn"``: per entry of `channels` a 3x3 convolution, ReLU and a 2x2 average pool
    (spatial sizes must stay even), then a dense layer of width `hidden` with ReLU (the
    features) and a linear head. ``kind="mlp"``: flatten, dense `hidden` + ReLU, dense
    `hidden` + ReLU (the features), linear head.

    Shapes: images ``[N, H, W, C]`` (values in [-1, 1]); ``features`` ``[N, hidden]``;
    logits ``[N, num_classes]``.

    Args:
      image_shape: (H, W, C).
      num_classes: number of classes.
      kind: ``"cnn"`` or ``"mlp"``.
      channels: convolution widths (CNN only).
      hidden: feature dimension.
      rngs: `nnx.Rngs` for initialisation.

    Raises:
      ValueError: on an unknown `kind`, or a CNN whose pooling would hit an odd spatial size.

    References:
      Heusel et al. 2017, "GANs trained by a two time-scale update rule converge to a local
      Nash equilibrium" (Frechet distance in a classifier's feature space).
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int = 10,
        *,
        kind: str = "cnn",
        channels: tuple[int, ...] = (16, 32),
        hidden: int = 128,
        rngs: nnx.Rngs,
    ):
        h, w, c = (int(v) for v in image_shape)
        self.image_shape = (h, w, c)
        self.kind = kind
        self.hidden = hidden
        if kind == "cnn":
            convs, cin = [], c
            for cout in channels:
                if h % 2 or w % 2:
                    raise ValueError(
                        f"Classifier: spatial size {(h, w)} is odd before a 2x2 pool; "
                        f"use fewer channels entries than {tuple(channels)} for image_shape {image_shape}."
                    )
                convs.append(nnx.Conv(cin, cout, (3, 3), padding="SAME", rngs=rngs))
                cin, h, w = cout, h // 2, w // 2
            self.convs = nnx.List(convs)
            self.fc = nnx.Linear(h * w * cin, hidden, rngs=rngs)
        elif kind == "mlp":
            self.convs = nnx.List([])
            self.fc0 = nnx.Linear(h * w * c, hidden, rngs=rngs)
            self.fc = nnx.Linear(hidden, hidden, rngs=rngs)
        else:
            raise ValueError(f"Classifier: kind must be 'cnn' or 'mlp', got {kind!r}.")
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def features(self, x: Array) -> Array:
        """Penultimate activations ``[N, hidden]`` of images ``[N, H, W, C]``."""
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(
                f"Classifier: images must have shape [N, {', '.join(map(str, self.image_shape))}], "
                f"got {tuple(x.shape)}."
            )
        if self.kind == "cnn":
            for conv in self.convs:
                x = _avg_pool2(jax.nn.relu(conv(x)))
            return jax.nn.relu(self.fc(x.reshape(x.shape[0], -1)))
        x = jax.nn.relu(self.fc0(x.reshape(x.shape[0], -1)))
        return jax.nn.relu(self.fc(x))

    def __call__(self, x: Array) -> Array:
        """Logits ``[N, num_classes]``."""
        return self.head(self.features(x))
