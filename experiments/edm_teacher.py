"""EDM teacher stage: a denoiser trained by denoising score matching (docs/reference.md section 6).

Two entry points:

- ``load_or_train(config)`` (used by f-distill): the trained teacher as a frozen
  `fdiv.train.Net`, from the stage cache (`experiments.cache`) or trained into it on first
  use. The key is `settings.TeacherConfig.model_key` (network, optimiser, noise distribution,
  ``num_steps``; not the sampler or logging fields) plus the data name and the code version of
  ``fdiv/`` and this module.
- ``train_and_evaluate(config, workdir)``: the stage as an experiment
  (``configs/edm_teacher_toy2d.py``): loads or trains the teacher, evaluates its Heun sampler
  (``teacher.sample_steps``; 2N - 1 network evaluations) beside a fresh target draw, writes
  ``summary.json`` and a side-by-side sample figure into `workdir`.

`sampler_reference` gives the sampler's metrics and samples for an evaluation setting, cached
inside the teacher's cache entry (written atomically, so concurrent runs are safe; in a
multi-process job by process 0, all processes agreeing on hit or miss, see `experiments.cache`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
import time
from typing import Any, Callable

import jax
import numpy as np
import optax

from experiments import cache, problems, settings
from fdiv import diffusion, train
from fdiv.train import sharding

CODE = ("fdiv", "experiments/edm_teacher.py", "experiments/problems.py", "experiments/cache.py")


@dataclasses.dataclass(frozen=True, eq=False)
class Teacher:
    """A trained EDM teacher.

    Attributes:
      net: the frozen denoiser (`fdiv.train.Net`, EMA parameters when the stage keeps them),
        replicated over the mesh.
      directory: its cache entry.
      sigma_data: the data scale it was preconditioned with.
      config: its typed stage config.
    """

    net: train.Net
    directory: str
    sigma_data: float
    config: settings.EDMTeacherConfig


def _as_stage(config: Any) -> settings.EDMTeacherConfig:
    return settings.read(settings.EDMTeacherConfig, config)


def _train_state(tc: settings.TeacherConfig, shape, sigma_data: float, mesh):
    model = problems.make_denoiser(tc.net, shape, sigma_data, tc.seed)
    n = tc.loop.num_steps
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        tc.learning_rate,
        min(tc.warmup_steps, max(n - 1, 1)),
        max(n, 1),
        tc.learning_rate * 0.05,
    )
    net = train.Net.create(model, optax.adam(schedule), ema_decay=tc.ema_decay or None)
    return sharding.replicate(train.TrainState.create(tc.seed, model=net), mesh)


def _fit(
    cfg: settings.EDMTeacherConfig,
    problem: problems.Problem,
    sigma_data: float,
    mesh,
    directory: str,
    print_fn,
) -> None:
    tc = cfg.teacher
    state = _train_state(tc, problem.shape, sigma_data, mesh)
    batcher = problem.batcher(tc.batch_size, tc.seed)
    target = problem.target if problem.kind == "toy" else None
    b = tc.batch_size

    @jax.jit
    def step(state, batch):
        k_data, k_loss = jax.random.split(state.step_key("teacher"))
        x = batch["x"] if batch is not None else target.sample(k_data, b)
        x = jax.lax.with_sharding_constraint(x, sharding.data_sharding(mesh))

        def loss_fn(params):
            d = state["model"].merge(params)
            return diffusion.dsm_loss(d, x, k_loss, sigma_data, p_mean=tc.p_mean, p_std=tc.p_std)

        loss, grads = jax.value_and_grad(loss_fn)(state["model"].params)
        return state.apply_gradients(model=grads), {"dsm_loss": loss}

    def step_fn(state, i):
        return step(state, batcher(i) if batcher is not None else None)

    train.fit(
        state,
        step_fn,
        workdir=directory,
        options=tc.loop,
        meta={"teacher_config": _key(cfg, sigma_data)},
        print_fn=print_fn,
    )


def _key(cfg: settings.EDMTeacherConfig, sigma_data: float) -> dict:
    return {"data": cfg.data, "teacher": cfg.teacher.model_key(), "sigma_data": sigma_data}


def load_or_train(
    config: Any,
    *,
    mesh=None,
    problem: problems.Problem | None = None,
    print_fn: Callable[[str], None] | None = None,
) -> Teacher:
    """The trained teacher of `config` (an `EDMTeacherConfig` or its ConfigDict).

    Trains it into the cache on first use; afterwards restores its final checkpoint.

    Args:
      config: the stage config (``data``, ``cache_dir``, ``teacher``).
      mesh: device mesh (default `fdiv.train.sharding.make_mesh()`).
      problem: the data set's `experiments.problems.Problem` when the caller has one.
      print_fn: progress lines while training (default print with a ``[teacher]`` tag).
    """
    cfg = _as_stage(config)
    mesh = mesh if mesh is not None else sharding.make_mesh()
    problem = problem or problems.Problem(
        cfg.data,
        eval_samples=cfg.eval_samples,
        eval_seed=cfg.eval_seed,
        mesh=mesh,
        classifier=settings.ClassifierConfig(),
    )
    tc = cfg.teacher
    sigma_data = tc.sigma_data or problem.sigma_data
    pf = print_fn or (lambda s: print(f"[teacher] {s}", flush=True))
    directory = cache.cached_run(
        f"teacher_{cfg.data}",
        _key(cfg, sigma_data),
        lambda d: _fit(cfg, problem, sigma_data, mesh, d, pf),
        cache_dir=cfg.cache_dir,
        code=cache.code_version(*CODE),
        print_fn=pf,
    )
    template = _train_state(tc, problem.shape, sigma_data, mesh)
    ckpt = train.Checkpointer(directory, every_steps=0, keep=1, async_save=False)
    try:
        state, _ = ckpt.restore(ckpt.latest_step(), template)
    finally:
        ckpt.close()
    net = state["model"]
    frozen = net.freeze(net.ema_params if tc.ema_decay else None)
    return Teacher(sharding.replicate(frozen, mesh), directory, sigma_data, cfg)


@functools.partial(
    jax.jit, static_argnames=("n", "shape", "num_steps", "sigma_min", "sigma_max", "rho")
)
def _sample(net: train.Net, key, *, n, shape, num_steps, sigma_min, sigma_max, rho):
    return diffusion.sample(
        net.merge(),
        key,
        (n,) + shape,
        num_steps=num_steps,
        sigma_min=sigma_min,
        sigma_max=sigma_max,
        rho=rho,
    )


def _write_atomic(path: str, write: Callable[[str], None]) -> None:
    fd, tmp = tempfile.mkstemp(
        prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=os.path.dirname(path)
    )
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def sampler_reference(
    teacher: Teacher, problem: problems.Problem, *, eval_seed: int, eval_key: dict | None = None
) -> tuple[dict, np.ndarray]:
    """Metrics and samples of the teacher's Heun sampler on ``problem.num_eval`` latents.

    Cached in the teacher's entry, keyed by the sampler fields, the evaluation setting and
    `eval_key` (e.g. the feature classifier of image metrics).

    Returns:
      ``(metrics, samples)``; metrics include ``num_evaluations`` and ``sample_sec``.
    """
    tc = teacher.config.teacher
    key_dict = {
        "n": problem.num_eval,
        "eval_seed": eval_seed,
        "sampler": {f: getattr(tc, f) for f in tc.SAMPLER_FIELDS},
        "ed_samples": problem.ed_samples,
        "extra": eval_key or {},
    }
    path = os.path.join(teacher.directory, f"sampler_eval_{cache.digest(key_dict)}.json")
    samples_path = path[: -len(".json")] + ".npy"
    # With several processes the branch decides whether collective sampling runs: agree on it.
    if cache.agree_present(os.path.exists(path) and os.path.exists(samples_path), path):
        with open(path) as f:
            return json.load(f), np.load(samples_path)
    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(eval_seed), 2)
    x = np.asarray(
        _sample(
            teacher.net,
            key,
            n=problem.num_eval,
            shape=problem.shape,
            num_steps=tc.sample_steps,
            sigma_min=tc.sigma_min,
            sigma_max=tc.sigma_max,
            rho=tc.rho,
        )
    )
    sample_sec = time.perf_counter() - t0
    result = problem.evaluate(x)
    result["num_evaluations"] = diffusion.num_evaluations(tc.sample_steps)
    result["sample_sec"] = sample_sec
    if jax.process_index() == 0:
        _write_atomic(samples_path, lambda p: np.save(open(p, "wb"), x))
        _write_atomic(path, lambda p: json.dump(result, open(p, "w"), indent=1))
    return result, x


def train_and_evaluate(config: Any, workdir: str, print_fn=None) -> dict:
    """Loads or trains the teacher of `config`, evaluates its sampler in `workdir`.

    Returns:
      The summary (also ``<workdir>/summary.json``): ``teacher`` (sampler metrics),
      ``target`` (a fresh target draw, toy data), ``teacher_dir``, ``config``.
    """
    cfg = settings.read(settings.EDMTeacherConfig, config, workdir)
    pf = print_fn or (lambda s: print(s, flush=True))
    mesh = sharding.make_mesh()
    problem = problems.Problem(
        cfg.data,
        eval_samples=cfg.eval_samples,
        eval_seed=cfg.eval_seed,
        mesh=mesh,
        classifier=settings.ClassifierConfig(
            dataset=cfg.data if cfg.data in problems.IMAGE_DATA else "digits",
            cache_dir=cfg.cache_dir,
        ),
    )
    t0 = time.perf_counter()
    teacher = load_or_train(
        cfg, mesh=mesh, problem=problem, print_fn=lambda s: pf(f"[teacher] {s}")
    )
    load_sec = time.perf_counter() - t0
    result, x = sampler_reference(teacher, problem, eval_seed=cfg.eval_seed)
    target = problem.target_reference()
    pf(f"teacher ({teacher.directory}): " + _fmt(result))
    panels = [
        ("target", problem.target_samples()),
        (f"teacher (Heun, {result['num_evaluations']} evaluations)", x),
    ]
    problem.plot_side_by_side(
        panels, os.path.join(workdir, "samples.png"), title=f"EDM teacher on {cfg.data}"
    )
    summary = {
        "config": dataclasses.asdict(cfg),
        "data": cfg.data,
        "teacher": result,
        "target": target,
        "teacher_dir": teacher.directory,
        "timing": {"teacher_load_or_train_sec": load_sec},
    }
    train.write_summary(workdir, summary)
    return summary


def _fmt(m: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())


def cache_entry(config: Any, sigma_data: float | None = None) -> str:
    """The cache directory the teacher of `config` lives in (trained or not).

    `sigma_data` defaults to ``teacher.sigma_data`` or, when that is 0, the data's measured
    scale.
    """
    cfg = _as_stage(config)
    if sigma_data is None:
        sigma_data = cfg.teacher.sigma_data or _data_sigma(cfg.data)
    return cache.entry_dir(
        f"teacher_{cfg.data}",
        _key(cfg, sigma_data),
        cache_dir=cfg.cache_dir,
        code=cache.code_version(*CODE),
    )


def _data_sigma(name: str) -> float:
    return problems.Problem(name, eval_samples=1, classifier=settings.ClassifierConfig()).sigma_data
