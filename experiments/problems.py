"""Data access, quality metrics and sample plots of one data set, shared by the EDM teacher
stage and f-distill (below both, so neither imports the other).

`Problem(data, ...)` covers the toy 2-D targets (sampled inside jit; docs/reference.md
section 8 metrics: modes recovered, precision, weight error, energy distance) and the image
data sets (an `fdiv.data.ArrayBatcher`; Frechet distance in the features of the cached
classifier stage and k-NN precision / recall). `make_denoiser` builds the EDM denoiser of a
`experiments.settings.NetConfig`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments import settings
from fdiv import data, metrics, nets, train

TOY_TARGETS = ("ring8", "grid25")
IMAGE_DATA = ("digits", "fashion_mnist")
DATA = TOY_TARGETS + IMAGE_DATA


class Problem:
    """Data access and evaluation for one data set (toy 2-D target or images).

    Args:
      name: one of `DATA`.
      eval_samples: samples scored by the metrics.
      eval_ed_samples: toy targets: also an energy distance on this many samples (0: off).
      eval_seed: seed of the evaluation's target draws (and of the models' latents).
      classifier: image data: the feature classifier stage config.
      mesh: device mesh of the batches.
    """

    def __init__(
        self,
        name: str,
        *,
        eval_samples: int,
        eval_ed_samples: int = 0,
        eval_seed: int = 1234,
        classifier: settings.ClassifierConfig | None = None,
        mesh=None,
    ):
        self.name = name
        self.mesh = mesh
        self.eval_samples = eval_samples
        self.ed_samples = eval_ed_samples
        # Samples drawn per evaluation: the section 8 metrics use the first eval_samples.
        self.num_eval = max(eval_samples, eval_ed_samples)
        self.key = jax.random.key(eval_seed)
        if name in TOY_TARGETS:
            self.kind = "toy"
            self.target = data.toy_target(name)
            self.shape = (2,)
            self.sigma_data = float(self.target.sigma_data)
            # Fresh target samples for the energy distance (section 8: 2000 vs 2000).
            self.reference = np.asarray(self.target.sample(jax.random.fold_in(self.key, 1), 2000))
            # The 2000-sample estimate's noise (~1e-3) hides differences between good
            # samplers; the large-sample estimate shrinks it about as 1/n.
            self.reference_large = (
                np.asarray(self.target.sample(jax.random.fold_in(self.key, 4), self.ed_samples))
                if self.ed_samples
                else None
            )
            self.images = None
        elif name in IMAGE_DATA:
            if eval_ed_samples:
                raise settings.ConfigError(
                    f"config.eval_ed_samples applies to the toy targets {TOY_TARGETS}; set it "
                    f"to 0 for {name!r}"
                )
            if classifier is None:
                raise settings.ConfigError(
                    f"config.classifier is missing: image data {name!r} needs the feature "
                    f"classifier's config (e.g. configs.classifier_digits.get_config())"
                )
            self.kind = "image"
            splits = data.load_images(name)
            self.images = splits["train"].images.astype(np.float32)
            self.shape = tuple(self.images.shape[1:])
            self.sigma_data = float(np.std(self.images))
            pool = np.concatenate([splits["test"].images, splits["train"].images]).astype(
                np.float32
            )
            self.reference = pool[:eval_samples]
            self.classifier = classifier
            self.extractor = None
        else:
            raise settings.ConfigError(f"config.data={name!r} must be one of {DATA}")

    def batcher(self, batch_size: int, seed: int):
        """`fdiv.data.ArrayBatcher` of the images; None for toy targets (sampled in jit)."""
        if self.kind == "toy":
            return None
        return data.ArrayBatcher({"x": self.images}, batch_size, seed, mesh=self.mesh)

    def _features(self, x: np.ndarray) -> np.ndarray:
        if self.extractor is None:
            from experiments import classifier

            self.extractor = classifier.load_or_train(self.classifier, print_fn=lambda s: None)
            self.reference_features = np.asarray(self.extractor.features(self.reference))
        return np.asarray(self.extractor.features(np.clip(x, -1.0, 1.0)))

    def target_reference(self) -> dict[str, float] | None:
        """Metrics of a fresh draw from a toy target: the floor set by sampling noise."""
        if self.kind != "toy":
            return None
        return self.evaluate(
            np.asarray(self.target.sample(jax.random.fold_in(self.key, 5), self.num_eval))
        )

    def target_samples(self) -> np.ndarray:
        """Real samples to show beside the models' (target draw or data images)."""
        return self.reference

    def evaluate(self, x: np.ndarray) -> dict[str, float]:
        """Quality metrics of samples ``x`` (``num_eval`` of them).

        Toy targets: section 8 metrics on the first ``eval_samples`` (energy distance on the
        first 2000), plus ``energy_distance_large`` on ``eval_ed_samples`` samples against as
        many fresh target samples when that is set.
        """
        x = np.asarray(x, np.float32)
        if self.kind == "toy":
            t = self.target
            m = metrics.mixture_metrics(
                x[: self.eval_samples], t.centres_array, t.weights_array, t.std
            )
            out = {
                "modes_recovered": float(m["modes_recovered"]),
                "precision": float(m["precision"]),
                "weight_error": float(m["weight_error"]),
                "energy_distance": float(metrics.energy_distance(x[:2000], self.reference)),
            }
            if self.ed_samples:
                out["energy_distance_large"] = float(
                    metrics.energy_distance(x[: self.ed_samples], self.reference_large)
                )
            return out
        feats = self._features(x)
        fd = metrics.frechet_distance_from_features(
            jnp.asarray(feats, jnp.float32), jnp.asarray(self.reference_features, jnp.float32)
        )
        pr = metrics.knn_precision_recall(self.reference_features, feats, k=3)
        return {
            "frechet_distance": float(fd),
            "precision": float(pr["precision"]),
            "recall": float(pr["recall"]),
        }

    def plot(self, x: np.ndarray, path: str, title: str) -> None:
        """One model's samples (over the target for toy data)."""
        x = np.asarray(x)
        if self.kind == "toy":
            t = self.target
            lim = float(np.max(np.abs(t.centres_array))) + 1.0
            train.save_scatter(
                x[:2000],
                path,
                reference=self.reference[:2000],
                centres=t.centres_array,
                title=title,
                lim=lim,
            )
        else:
            train.save_image_grid(np.clip(x[:64], -1, 1), path, ncols=8, title=title)

    def plot_side_by_side(
        self, panels: Sequence[tuple[str, Any]], path: str, title: str | None = None
    ) -> str | None:
        """Target, teacher, student (...) samples side by side in one PNG."""
        from fdiv.train import plotting

        centres = self.target.centres_array if self.kind == "toy" else None
        lim = float(np.max(np.abs(centres))) + 1.0 if centres is not None else None
        return plotting.save_side_by_side(panels, path, title=title, centres=centres, lim=lim)


def make_denoiser(
    net_cfg: settings.NetConfig, shape: tuple[int, ...], sigma_data: float, seed: int
) -> nets.EDMDenoiser:
    """The EDM-preconditioned denoiser of `net_cfg` for samples of `shape`."""
    rngs = nnx.Rngs(seed)
    if net_cfg.kind == "mlp":
        if len(shape) != 1:
            raise settings.ConfigError(
                f"config.teacher.net.kind='mlp' needs vector data, got samples of shape {shape}; "
                f"use kind='unet' for images"
            )
        raw = nets.MLP(
            shape[0], hidden=net_cfg.hidden, depth=net_cfg.depth, emb_dim=net_cfg.emb_dim, rngs=rngs
        )
    elif net_cfg.kind == "unet":
        if len(shape) != 3:
            raise settings.ConfigError(
                f"config.teacher.net.kind='unet' needs images [H, W, C], got samples of shape "
                f"{shape}"
            )
        raw = nets.UNet(
            shape[-1],
            base=net_cfg.base,
            channel_mult=tuple(net_cfg.channel_mult),
            num_res=net_cfg.num_res,
            emb_dim=net_cfg.emb_dim,
            rngs=rngs,
        )
    else:
        raise settings.ConfigError(
            f"config.teacher.net.kind={net_cfg.kind!r} must be 'mlp' or 'unet'"
        )
    return nets.EDMDenoiser(raw, sigma_data)
