"""f-distill: one-step distillation of an EDM teacher by f-divergence matching.

docs/reference.md sections 4 (the f-distill gradient) and 6 (EDM). ``train_and_evaluate(config,
workdir)``:

1. **Stages.** The EDM teacher (`experiments.edm_teacher.load_or_train`) and, for images, the
   feature classifier (`experiments.classifier.load_or_train`) come from the stage cache
   (`experiments.cache`): trained once per setting, shared by every run (divergence, seed)
   that uses them. The teacher's Heun sampler (``teacher.sample_steps = 18``: 35
   evaluations) is the quality reference; its evaluation is cached next to it.
2. **Distillation.** Generator ``G(z) = D_gen(sigma_max z; sigma_max)`` and fake-score
   denoiser both start from the teacher's weights; a `DiscriminatorHead` reads the features
   of the fake score (``disc_features="fake"``, DMD2-style: the discriminator loss also trains
   the fake score's trunk) or of the frozen teacher (``"teacher"``). Every loop step updates
   the fake score (DSM on generator samples) and the discriminator (``E_Q softplus(l) +
   E_P softplus(-l)`` on generator / data samples noised to the same sigma); every
   ``generator_every``-th step also updates the generator with `fdiv.distill.fdistill_loss`
   (weights ``h(r)`` of ``fdiv.get(config.divergence, **config.divergence_kw)`` from the
   discriminator's logit, clipped and batch-normalised) plus ``gan_weight`` times the
   non-saturating GAN loss.
3. **Evaluation** every ``eval_every`` steps: one-step samples from a fixed latent batch.
   ``summary.json`` holds one block per model in ``models``: ``target`` (toy data: a fresh
   target draw, the sampling-noise floor), ``teacher``, ``generator_init`` and ``student``.
   Toy targets use the section 8 metrics (modes recovered, precision, weight error, energy
   distance); images use the Frechet distance in the classifier's features and k-NN
   precision / recall. ``samples/side_by_side.png`` shows target, teacher and student;
   ``curves.png`` draws the teacher's and the target floor's values as reference lines.

Checkpoints (Orbax, exact resume), ``metrics.jsonl`` and progress lines come from
`fdiv.train.fit`. Batches are sharded over a ``'data'`` mesh axis, parameters are replicated;
the f-distill weight normalisation is a global batch mean (jnp.mean under jit over the
sharded batch).

Configs: ``configs/fdistill_toy2d.py`` (the base), ``configs/fdistill_digits.py``,
``configs/fdistill_fashion.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import fdiv
from experiments import edm_teacher, problems, settings
from fdiv import diffusion, distill, nets, train
from fdiv.train import sharding

FDistillConfig = settings.FDistillConfig
TOY_TARGETS = problems.TOY_TARGETS
IMAGE_DATA = problems.IMAGE_DATA

# Measured results that a run is put in context of when it ends (each with its command).
REFERENCE_RESULTS = {
    ("ring8", "reverse_kl"): {
        "label": "reverse KL (mode seeking, = DMD/VSD), seed 0",
        "num_steps": 6000,
        "student": {
            "modes_recovered": 5.0,
            "precision": 0.690,
            "weight_error": 0.527,
            "energy_distance": 0.0254,
        },
        "command": "python -m benchmarks.fdistill_divergences --config=configs/fdistill_toy2d.py "
        "--workdir=runs/compare_ring8 --seeds=0",
    },
}


def divergence_of(cfg: FDistillConfig) -> fdiv.FDivergence:
    """``fdiv.get(cfg.divergence, **cfg.divergence_kw)``, checked to have a weight h."""
    return distill.resolve_divergence(fdiv.get(cfg.divergence, **dict(cfg.divergence_kw)))


def divergence_label(cfg: FDistillConfig) -> str:
    """``js``, ``alpha(alpha=0.5)``: the divergence with its parameters."""
    kw = dict(cfg.divergence_kw)
    if not kw:
        return cfg.divergence
    return f"{cfg.divergence}({', '.join(f'{k}={v:g}' for k, v in sorted(kw.items()))})"


def _constrain(x, mesh):
    return jax.lax.with_sharding_constraint(x, sharding.data_sharding(mesh))


# ---------------------------------------------------------------------------------------------
# Distillation steps.


def _make_state(cfg: FDistillConfig, teacher: train.Net) -> train.TrainState:
    tc = cfg.teacher
    teacher_module = teacher.merge()
    if cfg.generator_sigma:
        # The latent's scale is that of the data noised to generator_sigma.
        s = cfg.generator_sigma
        gen = nets.OneStepGenerator.from_teacher(
            teacher_module, s, latent_std=(s**2 + teacher_module.sigma_data**2) ** 0.5
        )
    else:
        gen = nets.OneStepGenerator.from_teacher(teacher_module, tc.sigma_max)
    fake = nnx.clone(teacher_module)
    head = nets.DiscriminatorHead(
        teacher_module.feature_dim, hidden=cfg.disc_hidden, rngs=nnx.Rngs(cfg.seed)
    )

    def adam(lr, updates):
        # Each optimiser counts its own updates: the generator makes num_steps/generator_every.
        if cfg.lr_schedule == "cosine":
            lr = optax.cosine_decay_schedule(lr, max(updates, 1), cfg.final_lr_fraction)
        elif cfg.lr_schedule != "constant":
            raise ValueError(
                f"config.lr_schedule must be 'constant' or 'cosine', got {cfg.lr_schedule!r}."
            )
        return optax.adam(lr, b1=cfg.adam_b1, b2=cfg.adam_b2)

    gen_updates = cfg.loop.num_steps // cfg.generator_every
    return train.TrainState.create(
        cfg.seed,
        generator=train.Net.create(
            gen, adam(cfg.generator_lr, gen_updates), ema_decay=cfg.generator_ema or None
        ),
        fake_score=train.Net.create(fake, adam(cfg.fake_lr, cfg.loop.num_steps)),
        discriminator=train.Net.create(head, adam(cfg.disc_lr, cfg.loop.num_steps)),
        teacher=train.Net.create(teacher_module),
    )


def _make_steps(cfg: FDistillConfig, problem: problems.Problem, sigma_data: float, mesh):
    """Jitted ``critic_step(state, batch)`` and ``generator_step(state)``."""
    tc = cfg.teacher
    b = cfg.batch_size
    shape = problem.shape
    target = problem.target if problem.kind == "toy" else None
    divergence = divergence_of(cfg)
    ratio_clip = (cfg.ratio_clip_min, cfg.ratio_clip_max)
    expand = (b,) + (1,) * len(shape)
    if cfg.disc_features not in ("fake", "teacher"):
        raise ValueError(
            f"config.disc_features must be 'fake' or 'teacher', got {cfg.disc_features!r}."
        )

    def noise(key, n=b):
        return _constrain(jax.random.normal(key, (n,) + shape), mesh)

    def sigmas(key):
        return _constrain(
            diffusion.sample_sigma(key, (b,), cfg.sigma_p_mean, cfg.sigma_p_std), mesh
        )

    @jax.jit
    def critic_step(state, batch):
        ks = jax.random.split(state.step_key("critic"), 6)
        x = jax.lax.stop_gradient(state["generator"].merge()(noise(ks[0])))
        real = batch["x"] if batch is not None else _constrain(target.sample(ks[1], b), mesh)
        sig = sigmas(ks[2])
        s = sig.reshape(expand)
        xt_fake = x + s * noise(ks[4])
        xt_real = real + s * noise(ks[5])
        teacher = state["teacher"].merge()

        def loss_fn(fake_params, disc_params):
            fake = state["fake_score"].merge(fake_params)
            dsm = diffusion.dsm_loss(fake, x, ks[3], sigma_data, p_mean=tc.p_mean, p_std=tc.p_std)
            feat_net = fake if cfg.disc_features == "fake" else teacher
            both_sig = jnp.concatenate([sig, sig])
            _, feats = feat_net(jnp.concatenate([xt_fake, xt_real]), both_sig, return_features=True)
            logits = state["discriminator"].merge(disc_params)(feats, diffusion.c_noise(both_sig))
            l_fake, l_real = logits[:b], logits[b:]
            disc = distill.discriminator_loss(l_real, l_fake)
            acc = 0.5 * (jnp.mean(l_real > 0) + jnp.mean(l_fake < 0))
            return dsm + cfg.disc_loss_weight * disc, (dsm, disc, acc)

        (_, (dsm, disc, acc)), (g_fake, g_disc) = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(
            state["fake_score"].params, state["discriminator"].params
        )
        state = state.apply_gradients(fake_score=g_fake, discriminator=g_disc)
        return state, {"fake_dsm_loss": dsm, "disc_loss": disc, "disc_accuracy": acc}

    @jax.jit
    def generator_step(state):
        ks = jax.random.split(state.step_key("generator"), 3)
        z = noise(ks[0])
        sig = sigmas(ks[1])
        eps = noise(ks[2])
        teacher = state["teacher"].merge()
        fake = state["fake_score"].merge()
        head = state["discriminator"].merge()
        cn = diffusion.c_noise(sig)

        def loss_fn(gen_params):
            x = state["generator"].merge(gen_params)(z)
            xt = x + sig.reshape(expand) * eps
            x0_teacher = teacher(jax.lax.stop_gradient(xt), sig)
            if cfg.disc_features == "fake":
                # One pass gives the fake denoiser (stop-gradiented inside the loss) and the
                # features the GAN term differentiates through.
                x0_fake, feats = fake(xt, sig, return_features=True)
            else:
                x0_fake = fake(jax.lax.stop_gradient(xt), sig)
                _, feats = teacher(xt, sig, return_features=True)
            logit = head(feats, cn)
            surrogate = distill.fdistill_loss(
                xt,
                sig,
                x0_fake,
                x0_teacher,
                logit,
                divergence,
                x=x if cfg.dmd_normalize else None,
                normalize=cfg.normalize_weights,
                logit_clip=cfg.logit_clip,
                ratio_clip=ratio_clip,
            )
            gan = distill.generator_gan_loss(logit)
            return surrogate + cfg.gan_weight * gan, (surrogate, gan, logit)

        (_, (surrogate, gan, logit)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["generator"].params
        )
        state = state.apply_gradients(generator=grads)
        h = distill.weights(
            logit, divergence, logit_clip=cfg.logit_clip, ratio_clip=ratio_clip, normalize=False
        )
        return state, {
            "gen_surrogate": surrogate,
            "gen_gan_loss": gan,
            "weight_cv": jnp.std(h) / (jnp.mean(h) + 1e-12),
            "log_ratio_mean": jnp.mean(logit),
        }

    return critic_step, generator_step


@functools.partial(jax.jit, static_argnames=("ema",))
def _generate(net: train.Net, z, ema: bool = False):
    return net.merge(ema=ema)(z)


def _generator_samples(state, cfg: FDistillConfig, problem: problems.Problem, ema: bool):
    z = jax.random.normal(
        jax.random.fold_in(jax.random.key(cfg.eval_seed), 3), (problem.num_eval,) + problem.shape
    )
    return np.asarray(_generate(state["generator"], z, ema=ema))


# ---------------------------------------------------------------------------------------------
# Entry point.


@dataclasses.dataclass
class Distillation:
    """Everything a distillation run (or a step benchmark) needs, built by `build`.

    ``critic_step(state, batch) -> (state, metrics)`` updates the fake score and the
    discriminator; ``generator_step(state) -> (state, metrics)`` updates the generator;
    ``batch_fn(step)`` gives loop step ``step``'s data batch (``None`` for toy targets, which
    are sampled inside the step).
    """

    cfg: FDistillConfig
    problem: problems.Problem
    mesh: Any
    teacher: train.Net
    teacher_dir: str
    teacher_eval: dict
    teacher_samples: np.ndarray
    sigma_data: float
    state: train.TrainState
    critic_step: Any
    generator_step: Any
    batch_fn: Any
    stage_sec: float = 0.0

    def loop_step(self, state, step: int):
        """Loop step ``step``: a critic update, and a generator update every
        ``generator_every``-th step."""
        state, m = self.critic_step(state, self.batch_fn(step))
        if (step + 1) % self.cfg.generator_every == 0:
            state, gm = self.generator_step(state)
            m = {**m, **gm}
        return state, m


def read_config(config: Any, workdir: str | None = None) -> FDistillConfig:
    """The typed, validated config (every bad field in one `ConfigError`)."""
    return settings.read(FDistillConfig, config, workdir)


def build(config: Any, print_fn=None, workdir: str | None = None) -> Distillation:
    """Validates ``config``, loads or trains the stages, builds the state and the steps."""
    cfg = read_config(config, workdir)
    mesh = sharding.make_mesh()
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev:
        raise settings.ConfigError(
            f"config.batch_size={cfg.batch_size} must be a multiple of the {n_dev} devices"
        )
    pf = print_fn or (lambda s: print(s, flush=True))
    problem = problems.Problem(
        cfg.data,
        eval_samples=cfg.eval_samples,
        eval_ed_samples=cfg.eval_ed_samples,
        eval_seed=cfg.eval_seed,
        classifier=cfg.classifier_stage(),
        mesh=mesh,
    )
    t0 = time.perf_counter()
    teacher = edm_teacher.load_or_train(
        cfg.teacher_stage(), mesh=mesh, problem=problem, print_fn=lambda s: pf(f"[teacher] {s}")
    )
    eval_key = {"classifier": cfg.classifier.model_key()} if cfg.classifier is not None else None
    teacher_eval, teacher_x = edm_teacher.sampler_reference(
        teacher, problem, eval_seed=cfg.eval_seed, eval_key=eval_key
    )
    stage_sec = time.perf_counter() - t0
    state = sharding.replicate(_make_state(cfg, teacher.net), mesh)
    critic_step, generator_step = _make_steps(cfg, problem, teacher.sigma_data, mesh)
    batcher = problem.batcher(cfg.batch_size, cfg.seed + 1)
    batch_fn = batcher if batcher is not None else (lambda step: None)
    return Distillation(
        cfg,
        problem,
        mesh,
        teacher.net,
        teacher.directory,
        teacher_eval,
        teacher_x,
        teacher.sigma_data,
        state,
        critic_step,
        generator_step,
        batch_fn,
        stage_sec,
    )


# Fields of `fdiv.train.fit`'s summary that are timings of its loop.
_FIT_TIMING = {
    "first_step_sec": "distill_compile_and_first_step_sec",
    "steps_per_sec": "distill_steps_per_sec",
    "wall_time_sec": "distill_loop_sec",
}


def train_and_evaluate(config: Any, workdir: str, print_fn=None) -> dict:
    """Loads or trains the stages, distils the teacher with ``config.divergence``, evaluates.

    Returns:
      The run summary (also ``<workdir>/summary.json``): ``models`` with one block per model
      (``target``: toy data, a fresh target draw, the sampling-noise floor, else None;
      ``teacher``: its Heun sampler, with ``num_evaluations``; ``generator_init``;
      ``student``: the final one-step generator), ``training`` (`fdiv.train.fit`'s record:
      ``num_steps``, ``resumed_from``, last logged ``train`` metrics), ``timing``
      (``stages_sec``: loading or training the teacher / classifier and the teacher's sampler
      evaluation; ``distill_loop_sec``: the distillation loop with its evaluations;
      ``distill_compile_and_first_step_sec``; ``distill_steps_per_sec``: steady-state loop
      rate, evaluations excluded; ``total_sec``), ``divergence``, ``data``, ``teacher_dir``,
      ``num_devices`` and ``config``.
    """
    pf = print_fn or (lambda s: print(s, flush=True))
    t_start = time.perf_counter()
    run = build(config, print_fn=pf, workdir=workdir)
    cfg, problem, teacher_eval, teacher_x = (
        run.cfg,
        run.problem,
        run.teacher_eval,
        run.teacher_samples,
    )
    label = divergence_label(cfg)
    samples_dir = os.path.join(workdir, "samples")
    os.makedirs(samples_dir, exist_ok=True)
    np.save(os.path.join(samples_dir, "teacher.npy"), teacher_x)
    problem.plot(
        teacher_x,
        os.path.join(samples_dir, "teacher.png"),
        f"teacher, Heun {teacher_eval['num_evaluations']} evaluations",
    )
    pf(f"teacher ({run.teacher_dir}): " + _fmt(teacher_eval))

    init_x = _generator_samples(run.state, cfg, problem, ema=False)
    init_eval = problem.evaluate(init_x)
    problem.plot(
        init_x,
        os.path.join(samples_dir, "generator_init.png"),
        "generator at initialisation (1 evaluation)",
    )
    pf("generator at init: " + _fmt(init_eval))
    ema = bool(cfg.generator_ema)

    def eval_fn(state):
        x = _generator_samples(state, cfg, problem, ema=ema)
        result = problem.evaluate(x)
        step = int(state.step)
        problem.plot(
            x,
            os.path.join(samples_dir, f"student_{step:07d}.png"),
            f"one-step student ({label}), step {step}",
        )
        np.save(os.path.join(samples_dir, "student_latest.npy"), x)
        return result

    target_eval = problem.target_reference()
    if target_eval is not None:
        pf("fresh target samples: " + _fmt(target_eval))
    models = {"target": target_eval, "teacher": teacher_eval, "generator_init": init_eval}
    meta = {"config": config.to_dict() if hasattr(config, "to_dict") else dict(config)}
    banner = (
        f"f-distill: {label} on {cfg.data}, seed {cfg.seed}, {cfg.loop.num_steps} steps "
        f"(1 critic + 1/{cfg.generator_every} generator update each), "
        f"{run.mesh.devices.size} device(s), workdir {workdir}"
    )
    t_fit = time.perf_counter()
    state, fit_summary = train.fit(
        run.state,
        run.loop_step,
        workdir=workdir,
        options=cfg.loop,
        eval_fn=eval_fn,
        meta=meta,
        print_fn=print_fn,
        **_banner_kw(banner, pf),
    )
    fit_sec = time.perf_counter() - t_fit
    student = {k[len("eval/") :]: v for k, v in (fit_summary.get("eval") or {}).items()}
    models["student"] = student
    timing = {"stages_sec": run.stage_sec}
    training = {}
    for k, v in fit_summary.items():
        if k in _FIT_TIMING:
            timing[_FIT_TIMING[k]] = v
        elif k not in ("eval", "config") and not k.endswith("_sec"):
            training[k] = v
    timing.setdefault("distill_loop_sec", fit_sec)
    timing["total_sec"] = time.perf_counter() - t_start
    summary = {
        "models": models,
        "training": training,
        "timing": timing,
        "divergence": label,
        "data": cfg.data,
        "teacher_dir": run.teacher_dir,
        "num_devices": int(run.mesh.devices.size),
        "config": meta["config"],
    }
    train.write_summary(workdir, summary)
    student_x = np.load(os.path.join(samples_dir, "student_latest.npy"))
    panels = [("target", problem.target_samples())] + [
        (f"teacher (Heun, {teacher_eval['num_evaluations']} evaluations)", teacher_x),
        (f"student ({label}, 1 evaluation)", student_x),
    ]
    problem.plot_side_by_side(
        panels,
        os.path.join(samples_dir, "side_by_side.png"),
        title=f"f-distill on {cfg.data}: {label}, seed {cfg.seed}, {cfg.loop.num_steps} steps",
    )
    _plot_curves(workdir, cfg, label, models)
    for line in result_lines(summary):
        pf(line)
    return summary


def _banner_kw(banner: str, print_fn) -> dict:
    """``banner=`` for a `fit` that prints one; otherwise the banner is printed here."""
    import inspect

    if "banner" in inspect.signature(train.fit).parameters:
        return {"banner": banner}
    print_fn(banner)
    return {}


def _plot_curves(workdir: str, cfg: FDistillConfig, label: str, models: dict) -> None:
    refs = {}
    for name in models.get("student") or {}:
        r = {}
        if models.get("teacher") and name in models["teacher"]:
            r["teacher"] = models["teacher"][name]
        if models.get("target") and name in models["target"]:
            r["target floor"] = models["target"][name]
        if r:
            refs[f"eval/{name}"] = r
    train.plot_curves(
        workdir, title=f"f-distill {cfg.data}, {label}, seed {cfg.seed}", references=refs
    )


_SHOWN = {
    "toy": (
        ("modes_recovered", "modes"),
        ("precision", "precision"),
        ("weight_error", "weight error"),
        ("energy_distance", "energy distance"),
    ),
    "image": (
        ("frechet_distance", "Frechet distance"),
        ("precision", "precision"),
        ("recall", "recall"),
    ),
}


def _short(m: dict | None, kind: str) -> str:
    if not m:
        return "-"
    parts = []
    for k, name in _SHOWN[kind]:
        if k in m:
            parts.append(f"{name} {m[k]:.0f}" if k == "modes_recovered" else f"{name} {m[k]:.4g}")
    return ", ".join(parts)


def result_lines(summary: dict) -> list[str]:
    """The run's result in context: teacher, target floor and a measured reference."""
    models = summary["models"]
    kind = "toy" if "modes_recovered" in (models.get("student") or {}) else "image"
    lines = [
        f"result: one-step student ({summary['divergence']}, 1 evaluation): "
        f"{_short(models['student'], kind)}",
        f"  teacher (Heun, {models['teacher'].get('num_evaluations')} evaluations): "
        f"{_short(models['teacher'], kind)}",
    ]
    if models.get("target"):
        lines.append(
            f"  target floor (a fresh target draw scored the same way): "
            f"{_short(models['target'], kind)}"
        )
    lines.append(f"  generator at init: {_short(models['generator_init'], kind)}")
    name = summary["config"].get("divergence") if isinstance(summary.get("config"), dict) else None
    steps = summary["training"].get("num_steps")
    for (data, div), ref in REFERENCE_RESULTS.items():
        if data == summary["data"] and div != name and steps == ref["num_steps"]:
            lines.append(
                f"  for comparison, {ref['label']}: {_short(ref['student'], kind)} "
                f"(measured with: {ref['command']})"
            )
    return lines


def _fmt(m: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in m.items())
