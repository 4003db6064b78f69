"""Classifier stage: an image classifier on 8x8 digits or Fashion-MNIST, and a cached
feature extractor from it (the features of image Frechet distances).

``train_and_evaluate(config, workdir)`` trains `fdiv.nets.classifier.Classifier` with AdamW
(warmup + cosine decay) and softmax cross-entropy through `fdiv.train.fit` (checkpoints,
``metrics.jsonl``, ``curves.png``, ``summary.json``), evaluates test accuracy, and saves a grid
of misclassified test images (``misclassified.png``). Returns the summary dict, whose
``test_accuracy`` is the final test accuracy.

``load_or_train(config)`` (used by f-distill and the EDM teacher's image metrics) returns a
`FeatureExtractor` with ``features(images) -> [N, D]``; the classifier is trained once into
the stage cache (`experiments.cache`, key `settings.ClassifierConfig.model_key` plus the code
version of ``fdiv/`` and this module) and restored from its checkpoint afterwards.

Configs: ``configs/classifier_digits.py``, ``configs/classifier_fashion.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments import cache, settings
from fdiv import data as data_lib
from fdiv import train
from fdiv.nets.classifier import Classifier
from fdiv.train import sharding

ClassifierConfig = settings.ClassifierConfig
CODE = ("fdiv", "experiments/classifier.py", "experiments/cache.py")


def _load_data(cfg: ClassifierConfig):
    splits = data_lib.load_images(cfg.dataset)
    out = {}
    for name, limit in (("train", cfg.max_train_examples), ("test", cfg.max_test_examples)):
        s = splits[name]
        if limit and limit < len(s):
            s = data_lib.LabelledImages(s.images[:limit], s.labels[:limit], s.num_classes)
        out[name] = s
    return out


def _make_state(cfg: ClassifierConfig, image_shape, num_classes: int) -> train.TrainState:
    model = Classifier(
        image_shape,
        num_classes,
        kind=cfg.model.kind,
        channels=tuple(cfg.model.channels),
        hidden=cfg.model.hidden,
        rngs=nnx.Rngs(cfg.seed),
    )
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        cfg.learning_rate,
        min(cfg.warmup_steps, max(cfg.loop.num_steps - 1, 1)),
        max(cfg.loop.num_steps, 1),
    )
    tx = optax.adamw(schedule, weight_decay=cfg.weight_decay)
    return train.TrainState.create(cfg.seed, model=train.Net.create(model, tx))


@jax.jit
def _train_step(state: train.TrainState, batch: dict) -> tuple[train.TrainState, dict]:
    def loss_fn(params):
        logits = state["model"].merge(params)(batch["image"])
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["model"].params)
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state.apply_gradients(model=grads), {"loss": loss, "accuracy": acc}


@jax.jit
def _eval_step(net: train.Net, batch: dict) -> dict:
    logits = net.merge()(batch["image"])
    mask = batch["mask"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    pred = jnp.argmax(logits, -1)
    return {
        "loss_sum": jnp.sum(ce * mask),
        "correct": jnp.sum((pred == batch["label"]) * mask),
        "count": jnp.sum(mask),
        "pred": pred,
    }


def evaluate(
    net: train.Net, split: data_lib.LabelledImages, batch_size: int, mesh
) -> tuple[dict, np.ndarray]:
    """Test loss and accuracy over the whole split; also returns the predictions [N]."""
    tot = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    preds = []
    for batch in data_lib.eval_batches(split.arrays(), batch_size):
        out = jax.device_get(_eval_step(net, sharding.shard_batch(batch, mesh)))
        for k in tot:
            tot[k] += float(out[k])
        preds.append(np.asarray(out["pred"])[batch["mask"] > 0])
    return (
        {"loss": tot["loss_sum"] / tot["count"], "accuracy": tot["correct"] / tot["count"]},
        np.concatenate(preds),
    )


def _check(cfg: ClassifierConfig) -> ClassifierConfig:
    if cfg.dataset not in data_lib.IMAGE_DATASETS:
        raise settings.ConfigError(
            f"config.dataset={cfg.dataset!r} must be one of {sorted(data_lib.IMAGE_DATASETS)}"
        )
    return cfg


def _train(
    cfg: ClassifierConfig, workdir: str, print_fn=None
) -> tuple[train.TrainState, dict, Any]:
    mesh = sharding.make_mesh()
    splits = _load_data(cfg)
    batcher = data_lib.ArrayBatcher(splits["train"].arrays(), cfg.batch_size, cfg.seed, mesh=mesh)
    state = sharding.replicate(
        _make_state(cfg, splits["train"].images.shape[1:], splits["train"].num_classes), mesh
    )
    n_dev = mesh.devices.size
    eval_bs = -(-cfg.eval_batch_size // n_dev) * n_dev

    def step_fn(state, step):
        return _train_step(state, batcher(step))

    def eval_fn(state):
        return evaluate(state["model"], splits["test"], eval_bs, mesh)[0]

    state, summary = train.fit(
        state,
        step_fn,
        workdir=workdir,
        options=cfg.loop,
        eval_fn=eval_fn,
        meta={"config": dataclasses.asdict(cfg)},
        print_fn=print_fn,
    )
    return state, summary, (splits, mesh, eval_bs)


def train_and_evaluate(config: Any, workdir: str, print_fn=None) -> dict:
    """Trains the classifier described by `config` in `workdir` (resuming if possible).

    Returns:
      The run summary (also in ``<workdir>/summary.json``) with ``test_accuracy``,
      ``test_loss``, ``num_params``, ``steps_per_sec``, ``first_step_sec`` (compile + first
      step) and the loop fields of `fdiv.train.fit`.
    """
    cfg = _check(settings.read(ClassifierConfig, config, workdir))
    state, summary, (splits, mesh, eval_bs) = _train(cfg, workdir, print_fn=print_fn)
    test, preds = evaluate(state["model"], splits["test"], eval_bs, mesh)
    summary = {
        **summary,
        "dataset": cfg.dataset,
        "test_accuracy": test["accuracy"],
        "test_loss": test["loss"],
        "num_params": state["model"].num_params(),
        "num_devices": int(mesh.devices.size),
    }
    wrong = np.flatnonzero(preds != splits["test"].labels)[:64]
    if wrong.size:
        train.save_image_grid(
            splits["test"].images[wrong],
            os.path.join(workdir, "misclassified.png"),
            title=f"{wrong.size} misclassified test images (of the first shown)",
        )
    train.write_summary(workdir, summary)
    (print_fn or (lambda s: print(s, flush=True)))(
        f"test accuracy {test['accuracy']:.4f} ({len(splits['test'])} images)"
    )
    return summary


@functools.partial(jax.jit, static_argnames=("logits",))
def _apply(net: train.Net, images: jax.Array, logits: bool = False) -> jax.Array:
    model = net.merge()
    return model(images) if logits else model.features(images)


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureExtractor:
    """A trained classifier used as a feature map for Frechet distances.

    Attributes:
      net: the trained network (frozen `fdiv.train.Net`).
      dataset: data set it was trained on.
      image_shape: (H, W, C) it accepts.
      test_accuracy: its test accuracy.
      workdir: where it was trained and checkpointed.
    """

    net: train.Net
    dataset: str
    image_shape: tuple[int, int, int]
    test_accuracy: float
    workdir: str

    @property
    def feature_dim(self) -> int:
        return int(self.net.merge().hidden)

    def _run(self, images: Any, batch_size: int, logits: bool) -> jax.Array:
        images = jnp.asarray(images, jnp.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != tuple(self.image_shape):
            raise ValueError(
                f"FeatureExtractor({self.dataset}): images must have shape "
                f"[N, {', '.join(map(str, self.image_shape))}] in [-1, 1], got {tuple(images.shape)}."
            )
        n = images.shape[0]
        outs = []
        for start in range(0, n, batch_size):
            chunk = images[start : start + batch_size]
            pad = batch_size - chunk.shape[0] if n > batch_size else 0
            if pad:  # keep one shape per extractor, hence one compilation
                chunk = jnp.concatenate([chunk, jnp.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
            out = _apply(self.net, chunk, logits=logits)
            outs.append(out[: out.shape[0] - pad])
        return jnp.concatenate(outs) if len(outs) > 1 else outs[0]

    def features(self, images: Any, batch_size: int = 1000) -> jax.Array:
        """Penultimate-layer features float32 [N, D] of images [N, H, W, C] in [-1, 1]."""
        return self._run(images, batch_size, logits=False)

    def logits(self, images: Any, batch_size: int = 1000) -> jax.Array:
        """Class logits [N, num_classes]."""
        return self._run(images, batch_size, logits=True)


def load_or_train(config: Any, *, cache_dir: str | None = None, print_fn=None) -> FeatureExtractor:
    """The trained classifier of `config` as a `FeatureExtractor`, trained on first use.

    Args:
      config: a classifier config (`settings.ClassifierConfig` or its ConfigDict, e.g.
        ``configs.classifier_digits.get_config("quick")``).
      cache_dir: cache root instead of ``config.cache_dir`` (see `experiments.cache`).
      print_fn: progress-line sink while training (default print).

    Raises:
      ConfigError: on a bad config (e.g. an unknown dataset).
    """
    cfg = _check(settings.read(ClassifierConfig, config))
    root = cfg.cache_dir if cache_dir is None else cache_dir
    pf = print_fn or (lambda s: print(f"[classifier] {s}", flush=True))
    directory = cache.cached_run(
        f"classifier_{cfg.dataset}",
        cfg.model_key(),
        lambda d: _train(cfg, d, print_fn=pf),
        cache_dir=root,
        code=cache.code_version(*CODE),
        print_fn=pf,
    )
    splits = _load_data(cfg)
    mesh = sharding.make_mesh()
    template = sharding.replicate(
        _make_state(cfg, splits["train"].images.shape[1:], splits["train"].num_classes), mesh
    )
    ckpt = train.Checkpointer(directory, every_steps=0, keep=1, async_save=False)
    try:
        state, _ = ckpt.restore(ckpt.latest_step(), template)
    finally:
        ckpt.close()
    n_dev = mesh.devices.size
    eval_bs = -(-cfg.eval_batch_size // n_dev) * n_dev
    frozen = state["model"].freeze()
    acc = evaluate(frozen, splits["test"], eval_bs, mesh)[0]["accuracy"]
    return FeatureExtractor(
        frozen, cfg.dataset, tuple(splits["train"].images.shape[1:]), float(acc), directory
    )
