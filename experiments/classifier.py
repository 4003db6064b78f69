"""Image classifier on 8x8 digits or Fashion-MNIST, and a cached feature extractor from it.

``train_and_evaluate(config, workdir)`` trains `fdiv.nets.classifier.Classifier` with AdamW
(warmup + cosine decay) and softmax cross-entropy through `fdiv.train.fit` (checkpoints,
``metrics.jsonl``, ``curves.png``, ``summary.json``), evaluates test accuracy, and saves a grid
of misclassified test images (``misclassified.png``). Returns the summary dict, whose
``test_accuracy`` is the final test accuracy.

``load_or_train_classifier(dataset, cache_dir)`` returns a `FeatureExtractor` with
``features(images) -> [N, D]`` for Frechet distances (`fdiv.metrics`); the classifier is
trained once into ``<cache_dir>/classifier_<dataset>_<config hash>`` and restored from its
checkpoint afterwards.

Configs: ``configs/classifier_digits.py``, ``configs/classifier_fashion.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fdiv import data as data_lib
from fdiv import train
from fdiv.nets.classifier import Classifier
from fdiv.train import sharding

CONFIG_FILES = {"digits": "classifier_digits", "fashion_mnist": "classifier_fashion"}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Network shape (see `fdiv.nets.classifier.Classifier`)."""

    kind: str = "cnn"
    channels: tuple[int, ...] = (16, 32)
    hidden: int = 128


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Typed form of the classifier config (unknown config fields are errors)."""

    experiment: str = "classifier"
    dataset: str = "digits"
    seed: int = 0
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    max_train_examples: int = 0  # 0: all
    max_test_examples: int = 0  # 0: all
    eval_batch_size: int = 256
    model: ModelConfig = ModelConfig()
    num_steps: int = 1000
    log_every: int = 100
    eval_every: int = 0
    checkpoint_every_steps: int = 500
    checkpoint_every_secs: float = 600.0
    keep_checkpoints: int = 2
    async_checkpoints: bool = True


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
    model = Classifier(image_shape, num_classes, kind=cfg.model.kind, channels=tuple(cfg.model.channels),
                       hidden=cfg.model.hidden, rngs=nnx.Rngs(cfg.seed))
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, min(cfg.warmup_steps, max(cfg.num_steps - 1, 1)), max(cfg.num_steps, 1))
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
    return {"loss_sum": jnp.sum(ce * mask), "correct": jnp.sum((pred == batch["label"]) * mask),
            "count": jnp.sum(mask), "pred": pred}


def evaluate(net: train.Net, split: data_lib.LabelledImages, batch_size: int, mesh) -> tuple[dict, np.ndarray]:
    """Test loss and accuracy over the whole split; also returns the predictions [N]."""
    tot = {"loss_sum": 0.0, "correct": 0.0, "count": 0.0}
    preds = []
    for batch in data_lib.eval_batches(split.arrays(), batch_size):
        out = jax.device_get(_eval_step(net, sharding.shard_batch(batch, mesh)))
        for k in tot:
            tot[k] += float(out[k])
        preds.append(np.asarray(out["pred"])[batch["mask"] > 0])
    return ({"loss": tot["loss_sum"] / tot["count"], "accuracy": tot["correct"] / tot["count"]},
            np.concatenate(preds))


def _train(config: Any, workdir: str, print_fn=None) -> tuple[train.TrainState, dict, ClassifierConfig, Any]:
    train.check_config(config)
    cfg = train.to_dataclass(ClassifierConfig, config)
    if cfg.dataset not in data_lib.IMAGE_DATASETS:
        raise ValueError(f"config.dataset must be one of {sorted(data_lib.IMAGE_DATASETS)}, got {cfg.dataset!r}.")
    mesh = sharding.make_mesh()
    splits = _load_data(cfg)
    batcher = data_lib.ArrayBatcher(splits["train"].arrays(), cfg.batch_size, cfg.seed, mesh=mesh)
    state = sharding.replicate(_make_state(cfg, splits["train"].images.shape[1:], splits["train"].num_classes), mesh)
    n_dev = mesh.devices.size
    eval_bs = -(-cfg.eval_batch_size // n_dev) * n_dev

    def step_fn(state, step):
        return _train_step(state, batcher(step))

    def eval_fn(state):
        return evaluate(state["model"], splits["test"], eval_bs, mesh)[0]

    state, summary = train.fit(state, step_fn, workdir=workdir, options=train.LoopOptions.from_config(config),
                               eval_fn=eval_fn, meta={"config": config.to_dict()}, print_fn=print_fn)
    return state, summary, cfg, (splits, mesh, eval_bs)


def train_and_evaluate(config: Any, workdir: str) -> dict:
    """Trains the classifier described by `config` in `workdir` (resuming if possible).

    Returns:
      The run summary (also in ``<workdir>/summary.json``) with ``test_accuracy``,
      ``test_loss``, ``num_params``, ``steps_per_sec``, ``first_step_sec`` (compile + first
      step) and the loop fields of `fdiv.train.fit`.
    """
    state, summary, cfg, (splits, mesh, eval_bs) = _train(config, workdir)
    test, preds = evaluate(state["model"], splits["test"], eval_bs, mesh)
    summary = {**summary, "dataset": cfg.dataset, "test_accuracy": test["accuracy"], "test_loss": test["loss"],
               "num_params": state["model"].num_params(), "num_devices": int(mesh.devices.size)}
    wrong = np.flatnonzero(preds != splits["test"].labels)[:64]
    if wrong.size:
        train.save_image_grid(splits["test"].images[wrong], os.path.join(workdir, "misclassified.png"),
                              title=f"{wrong.size} misclassified test images (of the first shown)")
    train.write_summary(workdir, summary)
    print(f"test accuracy {test['accuracy']:.4f} ({len(splits['test'])} images)", flush=True)
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
            raise ValueError(f"FeatureExtractor({self.dataset}): images must have shape "
                             f"[N, {', '.join(map(str, self.image_shape))}] in [-1, 1], got {tuple(images.shape)}.")
        n = images.shape[0]
        outs = []
        for start in range(0, n, batch_size):
            chunk = images[start:start + batch_size]
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


def load_or_train_classifier(dataset: str, cache_dir: str, *, quick: bool = False, config: Any = None,
                             print_fn=None) -> FeatureExtractor:
    """A trained classifier for `dataset` as a `FeatureExtractor`, trained on first use.

    The run lives in ``<cache_dir>/classifier_<dataset>_<hash of the config>``; when its
    checkpoint already reached ``num_steps`` nothing is trained, the parameters are restored.

    Args:
      dataset: ``"digits"`` or ``"fashion_mnist"``.
      cache_dir: directory for cached runs.
      quick: use the config's ``quick`` variant (for tests; lower accuracy).
      config: a full classifier config instead of ``configs/classifier_<...>.py``.
      print_fn: progress-line sink while training (default print).

    Raises:
      ValueError: on an unknown `dataset`.
    """
    if config is None:
        if dataset not in CONFIG_FILES:
            raise ValueError(f"load_or_train_classifier: dataset must be one of {sorted(CONFIG_FILES)}, got {dataset!r}.")
        import experiments

        config = experiments.load_config(CONFIG_FILES[dataset], "quick" if quick else None)
    digest = hashlib.sha1(json.dumps(config.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:10]
    workdir = os.path.join(cache_dir, f"classifier_{dataset}_{digest}")
    state, summary, cfg, (splits, mesh, eval_bs) = _train(config, workdir, print_fn=print_fn)
    acc = (summary.get("eval") or {}).get("eval/accuracy", float("nan"))
    net = state["model"]
    frozen = train.Net(net.graphdef, net.params, net.rest, None, None, None, None)
    return FeatureExtractor(frozen, cfg.dataset, tuple(splits["train"].images.shape[1:]), float(acc), workdir)
