"""Knowledge distillation on Fashion-MNIST: one student per loss, accuracy and calibration.

Stages:

1. Teacher: the CNN classifier of ``configs/classifier_fashion.py`` (cached: trained once by
   `experiments.classifier.load_or_train` into ``config.cache_dir``, restored
   afterwards). Its logits on the training images are computed once.
2. Students: for every loss in ``config.losses`` and every seed, a smaller network (an MLP by
   default) trained with the same batches, steps and optimiser on
   ``cross-entropy(labels) + config.distill_weight * distillation term`` (labels only: no term;
   NKD: the authors' total, cross-entropy + NKD; SinKD: its weighted batch-wise term), through
   `fdiv.train.fit` (Orbax checkpoints and resume, ``metrics.jsonl``, ``curves.png``).

Metrics per student: test accuracy, test NLL and expected calibration error (15 equal-width
confidence bins). ``summary.json`` holds every run, ``results.md`` the mean +- standard deviation
over seeds per loss beside the teacher, ``results.png`` the same as bars.

Losses (``fdiv.kd``): ``labels``, ``kd``, ``reverse_kl``, ``js``, ``tv``, ``skew_kl``, ``gkd``,
``nkd``, ``bdkd``, ``sinkd`` (needs ``fdiv.transport``; skipped with a note when absent).
Config: ``configs/kd_fashion.py``.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import settings
from fdiv import data as data_lib
from fdiv import kd, train
from fdiv.train import sharding

LOSSES = settings.KD_FASHION_LOSSES
KDFashionConfig = settings.KDFashionConfig


def distill_term(name: str, cfg: KDFashionConfig, teacher_logits, student_logits, labels):
    """The distillation term of ``name`` averaged over the batch (0 for ``labels``)."""
    tau = cfg.temperature
    if name == "labels":
        return jnp.zeros((), jnp.float32)
    if name == "sinkd":
        return kd.sinkd_loss(teacher_logits, student_logits)
    if name == "kd":
        per = kd.kd_loss(teacher_logits, student_logits, temperature=tau)
    elif name == "nkd":
        per = kd.nkd_loss(
            teacher_logits,
            student_logits,
            labels,
            temperature=cfg.nkd_temperature,
            gamma=cfg.nkd_gamma,
        )
    elif name == "bdkd":
        per = kd.bdkd_loss(teacher_logits, student_logits, temperature=tau)
    else:
        divergence = {
            "reverse_kl": "reverse_kl",
            "js": "js",
            "tv": "total_variation",
            "skew_kl": "skew_kl",
            "gkd": "generalized_jsd",
        }[name]
        per = kd.divergence_loss(teacher_logits, student_logits, divergence, temperature=tau)
    return kd.reduce(per)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: sum over equal-width confidence bins of |accuracy - confidence| x bin fraction."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - confidence[sel].mean())
    return float(ece)


@functools.partial(jax.jit, static_argnames=("name", "cfg"))
def _train_step(state, batch, *, name, cfg):
    def loss_fn(params):
        logits = state["model"].merge(params)(batch["image"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        term = distill_term(name, cfg, batch["teacher_logits"], logits, batch["label"])
        weight = 1.0 if name in ("nkd", "sinkd") else cfg.distill_weight
        return ce + weight * term, (ce, term, logits)

    (loss, (ce, term, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state["model"].params
    )
    acc = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return state.apply_gradients(model=grads), {
        "loss": loss,
        "ce": ce,
        "distill": term,
        "accuracy": acc,
    }


@jax.jit
def _probs(net, images):
    return jax.nn.softmax(net.merge()(images), axis=-1)


def _evaluate_probs(probs: np.ndarray, labels: np.ndarray, bins: int) -> dict:
    nll = -np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-30)))
    return {
        "accuracy": float(np.mean(probs.argmax(1) == labels)),
        "nll": float(nll),
        "ece": expected_calibration_error(probs, labels, bins),
    }


def _student_probs(net, images, batch_size):
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
        out.append(np.asarray(_probs(net, jnp.asarray(chunk)))[: batch_size - pad])
    return np.concatenate(out)


def _limit(split, n):
    if n and n < len(split):
        return data_lib.LabelledImages(split.images[:n], split.labels[:n], split.num_classes)
    return split


def _sinkd_available() -> bool:
    return importlib.util.find_spec("fdiv.transport") is not None


def train_and_evaluate(config: Any, workdir: str) -> dict:
    """Trains the cached teacher (once) and every student; returns the summary dict."""
    import experiments
    from experiments import classifier

    cfg = settings.read_kd_fashion(config, workdir)
    teacher_config = experiments.load_config("classifier_fashion", cfg.teacher_variant or None)
    teacher = classifier.load_or_train(teacher_config, cache_dir=cfg.cache_dir or None)
    splits = data_lib.load_fashion_mnist()
    train_split = _limit(splits["train"], cfg.max_train_examples)
    test_split = _limit(splits["test"], cfg.max_test_examples)
    teacher_train_logits = np.asarray(teacher.logits(train_split.images))
    teacher_test = _evaluate_probs(
        np.asarray(jax.nn.softmax(teacher.logits(test_split.images), axis=-1)),
        test_split.labels,
        cfg.ece_bins,
    )
    print(
        f"teacher: test accuracy {teacher_test['accuracy']:.4f}, ECE {teacher_test['ece']:.4f}",
        flush=True,
    )
    mesh = sharding.make_mesh()
    image_shape = train_split.images.shape[1:]
    arrays = {**train_split.arrays(), "teacher_logits": teacher_train_logits}
    runs, notes = {}, []
    for name in cfg.losses:
        if name == "sinkd" and not _sinkd_available():
            notes.append("sinkd skipped: fdiv.transport is not installed")
            continue
        for seed in cfg.seeds:
            run_dir = os.path.join(workdir, name, f"seed{seed}")
            batcher = data_lib.ArrayBatcher(arrays, cfg.batch_size, seed, mesh=mesh)
            # The classifier stage's builder: the same network and optimiser code as the teacher.
            student = classifier._make_state(cfg.student_stage(seed), image_shape, 10)
            state = sharding.replicate(student, mesh)
            step = functools.partial(_train_step, name=name, cfg=cfg)

            def step_fn(state, i, batcher=batcher, step=step):
                return step(state, batcher(i))

            state, _ = train.fit(
                state,
                step_fn,
                workdir=run_dir,
                options=cfg.loop,
                meta={"loss": name, "seed": seed},
                plot=False,
                print_fn=lambda s, n=name, sd=seed: print(f"[{n}/{sd}] {s}", flush=True),
            )
            probs = _student_probs(state["model"], test_split.images, cfg.eval_batch_size)
            runs[f"{name}/{seed}"] = _evaluate_probs(probs, test_split.labels, cfg.ece_bins)
            print(f"{name} seed {seed}: {runs[f'{name}/{seed}']}", flush=True)
    table = results_table(runs, teacher_test, cfg)
    summary = {
        "teacher": teacher_test,
        "runs": runs,
        "notes": notes,
        "table": table,
        "config": settings.to_config_dict(cfg).to_dict(),
    }
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, default=str)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(table + "\n")
    plot_results(runs, teacher_test, os.path.join(workdir, "results.png"))
    print(table, flush=True)
    return summary


def _by_loss(runs: dict) -> dict:
    out: dict[str, dict[str, list[float]]] = {}
    for key, metrics in runs.items():
        name = key.split("/")[0]
        for k, v in metrics.items():
            out.setdefault(name, {}).setdefault(k, []).append(v)
    return out


def _sd(values) -> float:
    """Sample standard deviation over seeds (0 for one seed)."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def results_table(runs: dict, teacher: dict, cfg: KDFashionConfig) -> str:
    lines = [
        (
            f"Fashion-MNIST test set (10000 images unless limited), student {cfg.student.kind}"
            f" hidden {cfg.student.hidden}, {cfg.loop.num_steps} steps of batch"
            f" {cfg.batch_size}, temperature {cfg.temperature}; mean ± sample sd over seeds"
            f" {list(cfg.seeds)}"
        ),
        "",
        "| loss | test accuracy | ECE | NLL |",
        "|---|---:|---:|---:|",
        (
            f"| teacher (CNN) | {teacher['accuracy']:.4f} | {teacher['ece']:.4f} |"
            f" {teacher['nll']:.4f} |"
        ),
    ]
    for name, m in _by_loss(runs).items():
        cells = [f"{np.mean(m[k]):.4f} ± {_sd(m[k]):.4f}" for k in ("accuracy", "ece", "nll")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(runs: dict, teacher: dict, path: str) -> None:
    """Bars of mean ± sd per loss (dots: the seeds), the teacher as a dashed line."""
    from matplotlib.figure import Figure

    by = _by_loss(runs)
    names = list(by)
    fig = Figure(figsize=(max(6, 0.8 * len(names) + 2), 6.5))
    panels = (("accuracy", "test accuracy"), ("ece", "expected calibration error"))
    for i, (key, label) in enumerate(panels):
        ax = fig.add_subplot(2, 1, i + 1)
        means = np.array([np.mean(by[n][key]) for n in names])
        sds = np.array([_sd(by[n][key]) for n in names])
        colors = ["tab:gray" if n == "labels" else "tab:blue" for n in names]
        ax.bar(names, means, yerr=sds, capsize=3, color=colors, alpha=0.8)
        for j, n in enumerate(names):
            ax.plot([j] * len(by[n][key]), by[n][key], "k.", ms=4)
        ax.axhline(teacher[key], color="tab:red", ls="--", label="teacher (CNN)")
        if "labels" in by:
            ax.axhline(means[names.index("labels")], color="tab:gray", ls=":", label="labels only")
        ax.set_ylabel(label)
        if key == "accuracy" and len(means):
            values = np.concatenate([np.asarray(by[n][key]) for n in names])
            low, high = min(values.min(), teacher[key]), max(values.max(), teacher[key])
            pad = 0.15 * (high - low) + 1e-3
            ax.set_ylim(max(0.0, low - pad), min(1.0, high + pad))
        ax.legend(loc="best", fontsize=8)
        ax.tick_params(axis="x", labelsize=9)
    fig.axes[-1].set_xlabel("student loss (labels: cross-entropy only)")
    fig.suptitle("Fashion-MNIST students by loss (mean ± sd over seeds; dots: seeds)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
