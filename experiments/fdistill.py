"""f-distill: one-step distillation of an EDM teacher by f-divergence matching (SPEC 4, 6).

``train_and_evaluate(config, workdir)``:

1. **Teacher.** Trains an EDM denoiser on the data (DSM loss, SPEC section 6) or restores it:
   the teacher lives in ``<cache_dir>/teacher_<data>_<hash of the teacher config>``, so it is
   trained once per setting and shared by every run (divergence, seed) that uses the same
   teacher config. Its 35-evaluation Heun sampler (``teacher.sample_steps = 18``) is the
   quality reference; its evaluation is cached next to it.
2. **Distillation.** Generator ``G(z) = D_gen(sigma_max z; sigma_max)`` and fake-score
   denoiser both start from the teacher's weights; a `DiscriminatorHead` reads the features
   of the fake-score (``disc_features="fake"``, DMD2-style: the discriminator loss also trains
   the fake score's trunk) or of the frozen teacher (``"teacher"``). Every loop step updates
   the fake score (DSM on generator samples) and the discriminator (``E_Q softplus(l) +
   E_P softplus(-l)`` on generator / data samples noised to the same sigma); every
   ``generator_every``-th step also updates the generator with `fdiv.distill.fdistill_loss`
   (weights ``h(r)`` of ``config.divergence`` from the discriminator's logit, clipped and
   batch-normalised) plus ``gan_weight`` times the non-saturating GAN loss.
3. **Evaluation** every ``eval_every`` steps: one-step samples from a fixed latent batch,
   with the teacher's sampler and the generator at initialisation as references (both in
   ``summary.json``). Toy 2-D targets use the SPEC section 8 metrics (modes recovered,
   precision, weight error, energy distance); images use the Frechet distance in the
   features of the framework's classifier (`experiments.classifier`) and k-NN precision /
   recall against real images. Sample plots go to ``<workdir>/samples/``.

Checkpoints (Orbax, exact resume), ``metrics.jsonl``, progress lines and ``curves.png`` come
from `fdiv.train.fit`. Batches are sharded over a ``'data'`` mesh axis, parameters are
replicated; the f-distill weight normalisation is a global batch mean (jnp.mean under jit
over the sharded batch).

Configs: ``configs/fdistill_toy2d.py``, ``configs/fdistill_digits.py``,
``configs/fdistill_fashion.py``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from fdiv import data as data_lib
from fdiv import diffusion, distill, metrics, nets, train
from fdiv.train import sharding

TOY_TARGETS = ("ring8", "grid25")
IMAGE_DATA = ("digits", "fashion_mnist")


# ---------------------------------------------------------------------------------------------
# Typed config.


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """Raw network of the denoisers: ``kind`` "mlp" (vectors) or "unet" (images)."""

    kind: str = "mlp"
    hidden: int = 128
    depth: int = 3
    emb_dim: int = 32
    base: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res: int = 1


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """EDM teacher: network, DSM training and sampler (SPEC section 6)."""

    net: NetConfig = NetConfig()
    seed: int = 0
    num_steps: int = 4000
    batch_size: int = 512
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    ema_decay: float = 0.0  # 0: no parameter average
    p_mean: float = -1.0
    p_std: float = 1.6
    sigma_data: float = 0.0  # 0: measured from the data
    sigma_min: float = 0.002
    sigma_max: float = 20.0
    rho: float = 7.0
    sample_steps: int = 18  # Heun: 2N - 1 = 35 evaluations
    log_every: int = 500
    checkpoint_every_steps: int = 0


@dataclasses.dataclass(frozen=True)
class FDistillConfig:
    """Typed form of an f-distill config (unknown fields are errors)."""

    experiment: str = "fdistill"
    data: str = "ring8"
    seed: int = 0
    cache_dir: str = ""  # "": $FDIV_CACHE or ~/.cache/fdiv
    teacher: TeacherConfig = TeacherConfig()
    divergence: str = "reverse_kl"
    batch_size: int = 256
    generator_every: int = 2  # critic (fake score + discriminator) updates per generator update
    gan_weight: float = 3e-3
    generator_lr: float = 5e-4
    fake_lr: float = 1e-3
    disc_lr: float = 1e-3
    adam_b1: float = 0.0
    adam_b2: float = 0.999
    lr_schedule: str = "constant"  # or "cosine": decay to final_lr_fraction at num_steps
    final_lr_fraction: float = 0.1
    generator_ema: float = 0.0  # 0: evaluate the raw generator
    generator_sigma: float = 0.0  # s > 0: G(z) = D(sqrt(s^2 + sigma_data^2) z; s); 0: sigma_max
    disc_features: str = "fake"  # "fake" or "teacher"
    disc_hidden: int = 128
    disc_loss_weight: float = 1.0
    sigma_p_mean: float = -1.0  # noise levels of the generator / discriminator updates
    sigma_p_std: float = 1.6
    dmd_normalize: bool = True
    logit_clip: float = 10.0
    ratio_clip_min: float = 0.1
    ratio_clip_max: float = 20.0
    normalize_weights: bool = True
    eval_samples: int = 4000
    eval_ed_samples: int = 0  # toy targets: also an energy distance on this many samples (0: off)
    eval_seed: int = 1234
    quick_classifier: bool = False  # images: the classifier's quick variant (tests)
    num_steps: int = 3000
    log_every: int = 100
    eval_every: int = 1000
    checkpoint_every_steps: int = 1000
    checkpoint_every_secs: float = 600.0
    keep_checkpoints: int = 2
    async_checkpoints: bool = True


def _cache_dir(cfg: FDistillConfig) -> str:
    if cfg.cache_dir:
        return cfg.cache_dir
    return os.environ.get("FDIV_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fdiv"))


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


# ---------------------------------------------------------------------------------------------
# Data: toy targets sampled inside jit, images from an ArrayBatcher.


class _Problem:
    """Data access and evaluation for one data set (toy 2-D target or images)."""

    def __init__(self, cfg: FDistillConfig, mesh):
        self.name = cfg.data
        self.mesh = mesh
        self.eval_samples = cfg.eval_samples
        self.ed_samples = cfg.eval_ed_samples
        # Samples drawn per evaluation: the SPEC metrics use the first eval_samples of them.
        self.num_eval = max(cfg.eval_samples, cfg.eval_ed_samples)
        self.key = jax.random.key(cfg.eval_seed)
        if cfg.data in TOY_TARGETS:
            self.kind = "toy"
            self.target = data_lib.toy_target(cfg.data)
            self.shape = (2,)
            self.sigma_data = float(self.target.sigma_data)
            # Fresh target samples for the energy distance (SPEC section 8: 2000 vs 2000).
            self.reference = np.asarray(self.target.sample(jax.random.fold_in(self.key, 1),
                                                           2000))
            # The SPEC estimate's sampling noise (~1e-3) hides differences between good
            # samplers; the large-sample estimate shrinks it about as 1/n.
            self.reference_large = (np.asarray(self.target.sample(
                jax.random.fold_in(self.key, 4), self.ed_samples)) if self.ed_samples else None)
            self.images = None
        elif cfg.data in IMAGE_DATA:
            self.kind = "image"
            splits = data_lib.load_images(cfg.data)
            self.images = splits["train"].images.astype(np.float32)
            self.shape = tuple(self.images.shape[1:])
            self.sigma_data = float(np.std(self.images))
            pool = np.concatenate([splits["test"].images, splits["train"].images]).astype(np.float32)
            self.reference = pool[: cfg.eval_samples]
            self.extractor = None
            self.quick_classifier = cfg.quick_classifier
            self.cache_dir = _cache_dir(cfg)
        else:
            raise ValueError(f"config.data must be one of {TOY_TARGETS + IMAGE_DATA}, got "
                             f"{cfg.data!r}.")
        if self.ed_samples and self.kind != "toy":
            raise ValueError(f"config.eval_ed_samples applies to the toy targets {TOY_TARGETS}; "
                             f"set it to 0 for {cfg.data!r}.")

    def batcher(self, batch_size: int, seed: int):
        if self.kind == "toy":
            return None
        return data_lib.ArrayBatcher({"x": self.images}, batch_size, seed, mesh=self.mesh)

    def _features(self, x: np.ndarray) -> np.ndarray:
        if self.extractor is None:
            from experiments import classifier

            self.extractor = classifier.load_or_train_classifier(
                self.name, self.cache_dir, quick=self.quick_classifier, print_fn=lambda s: None)
            self.reference_features = np.asarray(self.extractor.features(self.reference))
        return np.asarray(self.extractor.features(np.clip(x, -1.0, 1.0)))

    def target_reference(self) -> dict[str, float] | None:
        """Metrics of a fresh draw from a toy target: the floor set by sampling noise."""
        if self.kind != "toy":
            return None
        return self.evaluate(np.asarray(self.target.sample(jax.random.fold_in(self.key, 5),
                                                           self.num_eval)))

    def evaluate(self, x: np.ndarray) -> dict[str, float]:
        """Quality metrics of samples ``x`` (``num_eval`` of them).

        Toy targets: SPEC section 8 metrics on the first ``eval_samples`` (energy distance on
        the first 2000), plus ``energy_distance_large`` on ``eval_ed_samples`` samples against
        as many fresh target samples when that is set.
        """
        x = np.asarray(x, np.float32)
        if self.kind == "toy":
            t = self.target
            m = metrics.mixture_metrics(x[:self.eval_samples], t.centres_array, t.weights_array,
                                        t.std)
            ed = metrics.energy_distance(x[:2000], self.reference)
            out = {"modes_recovered": float(m["modes_recovered"]),
                   "precision": float(m["precision"]),
                   "weight_error": float(m["weight_error"]),
                   "energy_distance": float(ed)}
            if self.ed_samples:
                out["energy_distance_large"] = float(metrics.energy_distance(
                    x[:self.ed_samples], self.reference_large))
            return out
        feats = self._features(x)
        fd = metrics.frechet_distance_from_features(
            jnp.asarray(feats, jnp.float32), jnp.asarray(self.reference_features, jnp.float32))
        pr = metrics.knn_precision_recall(self.reference_features, feats, k=3)
        return {"frechet_distance": float(fd), "precision": float(pr["precision"]),
                "recall": float(pr["recall"])}

    def plot(self, x: np.ndarray, path: str, title: str) -> None:
        x = np.asarray(x)
        if self.kind == "toy":
            t = self.target
            lim = float(np.max(np.abs(t.centres_array))) + 1.0
            train.save_scatter(x[:2000], path, reference=self.reference[:2000],
                               centres=t.centres_array, title=title, lim=lim)
        else:
            train.save_image_grid(np.clip(x[:64], -1, 1), path, ncols=8, title=title)


def _constrain(x, mesh):
    return jax.lax.with_sharding_constraint(x, sharding.data_sharding(mesh))


# ---------------------------------------------------------------------------------------------
# Networks.


def _make_denoiser(net_cfg: NetConfig, shape: tuple[int, ...], sigma_data: float,
                   seed: int) -> nets.EDMDenoiser:
    rngs = nnx.Rngs(seed)
    if net_cfg.kind == "mlp":
        if len(shape) != 1:
            raise ValueError(f"teacher.net.kind='mlp' needs vector data, got samples of shape "
                             f"{shape}; use kind='unet' for images.")
        raw = nets.MLP(shape[0], hidden=net_cfg.hidden, depth=net_cfg.depth,
                       emb_dim=net_cfg.emb_dim, rngs=rngs)
    elif net_cfg.kind == "unet":
        if len(shape) != 3:
            raise ValueError(f"teacher.net.kind='unet' needs images [H, W, C], got samples of "
                             f"shape {shape}.")
        raw = nets.UNet(shape[-1], base=net_cfg.base, channel_mult=tuple(net_cfg.channel_mult),
                        num_res=net_cfg.num_res, emb_dim=net_cfg.emb_dim, rngs=rngs)
    else:
        raise ValueError(f"teacher.net.kind must be 'mlp' or 'unet', got {net_cfg.kind!r}.")
    return nets.EDMDenoiser(raw, sigma_data)


def _frozen(net: train.Net, ema: bool = False) -> train.Net:
    params = net.ema_params if ema and net.ema_params is not None else net.params
    return train.Net(net.graphdef, params, net.rest, None, None, None, None)


# ---------------------------------------------------------------------------------------------
# Teacher: train once per setting, cache.


@functools.partial(jax.jit, static_argnames=("n", "shape", "num_steps", "sigma_min",
                                             "sigma_max", "rho"))
def _teacher_sample(net: train.Net, key, *, n, shape, num_steps, sigma_min, sigma_max, rho):
    model = net.merge()
    return diffusion.sample(model, key, (n,) + shape, num_steps=num_steps, sigma_min=sigma_min,
                            sigma_max=sigma_max, rho=rho)


def load_or_train_teacher(cfg: FDistillConfig, problem: _Problem, mesh, print_fn=None):
    """The trained EDM teacher as a frozen `train.Net`, its directory and sigma_data.

    Trains into ``<cache_dir>/teacher_<data>_<digest>`` on first use; afterwards `fit`
    finds the finished checkpoint and only restores it.
    """
    tc = cfg.teacher
    sigma_data = tc.sigma_data or problem.sigma_data
    key_dict = {"data": cfg.data, "teacher": dataclasses.asdict(tc), "sigma_data": sigma_data}
    tdir = os.path.join(_cache_dir(cfg), f"teacher_{cfg.data}_{_digest(key_dict)}")
    model = _make_denoiser(tc.net, problem.shape, sigma_data, tc.seed)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, tc.learning_rate, min(tc.warmup_steps, max(tc.num_steps - 1, 1)),
        max(tc.num_steps, 1), tc.learning_rate * 0.05)
    net = train.Net.create(model, optax.adam(schedule), ema_decay=tc.ema_decay or None)
    state = sharding.replicate(train.TrainState.create(tc.seed, model=net), mesh)
    batcher = problem.batcher(tc.batch_size, tc.seed)
    target = problem.target if problem.kind == "toy" else None
    b = tc.batch_size

    @jax.jit
    def step(state, batch):
        k_data, k_loss = jax.random.split(state.step_key("teacher"))
        x = batch["x"] if batch is not None else target.sample(k_data, b)
        x = _constrain(x, mesh)

        def loss_fn(params):
            d = state["model"].merge(params)
            return diffusion.dsm_loss(d, x, k_loss, sigma_data, p_mean=tc.p_mean, p_std=tc.p_std)

        loss, grads = jax.value_and_grad(loss_fn)(state["model"].params)
        return state.apply_gradients(model=grads), {"dsm_loss": loss}

    def step_fn(state, i):
        return step(state, batcher(i) if batcher is not None else None)

    options = train.LoopOptions(num_steps=tc.num_steps, log_every=tc.log_every,
                                checkpoint_every_steps=tc.checkpoint_every_steps,
                                checkpoint_every_secs=600.0, keep_checkpoints=1)
    pf = print_fn or (lambda s: print(f"[teacher] {s}", flush=True))
    state, summary = train.fit(state, step_fn, workdir=tdir, options=options,
                               meta={"teacher_config": key_dict}, print_fn=pf,
                               plot=_summary_missing(tdir))
    teacher = sharding.replicate(_frozen(state["model"], ema=bool(tc.ema_decay)), mesh)
    return teacher, tdir, sigma_data, summary


def _summary_missing(workdir: str) -> bool:
    return not os.path.exists(os.path.join(workdir, "summary.json"))


def teacher_reference(cfg: FDistillConfig, problem: _Problem, teacher: train.Net, tdir: str):
    """Metrics and samples of the teacher's Heun sampler, cached in the teacher directory."""
    tc = cfg.teacher
    n = problem.num_eval
    key_dict = {"n": n, "eval_seed": cfg.eval_seed, "steps": tc.sample_steps}
    if problem.ed_samples:
        key_dict["ed_samples"] = problem.ed_samples
    if problem.kind == "image":  # image metrics depend on the feature classifier
        key_dict["quick_classifier"] = cfg.quick_classifier
    path = os.path.join(tdir, f"teacher_eval_{_digest(key_dict)}.json")
    samples_path = path.replace(".json", ".npy")
    if os.path.exists(path) and os.path.exists(samples_path):
        with open(path) as f:
            return json.load(f), np.load(samples_path)
    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(cfg.eval_seed), 2)
    x = np.asarray(_teacher_sample(teacher, key, n=n, shape=problem.shape,
                                   num_steps=tc.sample_steps, sigma_min=tc.sigma_min,
                                   sigma_max=tc.sigma_max, rho=tc.rho))
    sample_sec = time.perf_counter() - t0
    result = problem.evaluate(x)
    result["num_evaluations"] = diffusion.num_evaluations(tc.sample_steps)
    result["sample_sec"] = sample_sec
    np.save(samples_path, x)
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    return result, x


# ---------------------------------------------------------------------------------------------
# Distillation steps.


def _make_state(cfg: FDistillConfig, teacher: train.Net) -> train.TrainState:
    tc = cfg.teacher
    teacher_module = teacher.merge()
    if cfg.generator_sigma:
        # The latent's scale is that of the data noised to generator_sigma.
        s = cfg.generator_sigma
        gen = nets.OneStepGenerator.from_teacher(
            teacher_module, s, latent_std=(s**2 + teacher_module.sigma_data**2) ** 0.5)
    else:
        gen = nets.OneStepGenerator.from_teacher(teacher_module, tc.sigma_max)
    fake = nnx.clone(teacher_module)
    head = nets.DiscriminatorHead(teacher_module.feature_dim, hidden=cfg.disc_hidden,
                                  rngs=nnx.Rngs(cfg.seed))

    def adam(lr, updates):
        # Each optimiser counts its own updates: the generator makes num_steps/generator_every.
        if cfg.lr_schedule == "cosine":
            lr = optax.cosine_decay_schedule(lr, max(updates, 1), cfg.final_lr_fraction)
        elif cfg.lr_schedule != "constant":
            raise ValueError(f"config.lr_schedule must be 'constant' or 'cosine', got "
                             f"{cfg.lr_schedule!r}.")
        return optax.adam(lr, b1=cfg.adam_b1, b2=cfg.adam_b2)

    gen_updates = cfg.num_steps // cfg.generator_every
    return train.TrainState.create(
        cfg.seed,
        generator=train.Net.create(gen, adam(cfg.generator_lr, gen_updates),
                                   ema_decay=cfg.generator_ema or None),
        fake_score=train.Net.create(fake, adam(cfg.fake_lr, cfg.num_steps)),
        discriminator=train.Net.create(head, adam(cfg.disc_lr, cfg.num_steps)),
        teacher=train.Net.create(teacher_module))


def _make_steps(cfg: FDistillConfig, problem: _Problem, sigma_data: float, mesh):
    """Jitted ``critic_step(state, batch)`` and ``generator_step(state)``."""
    tc = cfg.teacher
    b = cfg.batch_size
    shape = problem.shape
    target = problem.target if problem.kind == "toy" else None
    divergence = distill.resolve_divergence(cfg.divergence)
    ratio_clip = (cfg.ratio_clip_min, cfg.ratio_clip_max)
    expand = (b,) + (1,) * len(shape)
    if cfg.disc_features not in ("fake", "teacher"):
        raise ValueError(f"config.disc_features must be 'fake' or 'teacher', got "
                         f"{cfg.disc_features!r}.")

    def noise(key, n=b):
        return _constrain(jax.random.normal(key, (n,) + shape), mesh)

    def sigmas(key):
        return _constrain(diffusion.sample_sigma(key, (b,), cfg.sigma_p_mean, cfg.sigma_p_std),
                          mesh)

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
            dsm = diffusion.dsm_loss(fake, x, ks[3], sigma_data, p_mean=tc.p_mean,
                                     p_std=tc.p_std)
            feat_net = fake if cfg.disc_features == "fake" else teacher
            both_sig = jnp.concatenate([sig, sig])
            _, feats = feat_net(jnp.concatenate([xt_fake, xt_real]), both_sig,
                                return_features=True)
            logits = state["discriminator"].merge(disc_params)(feats,
                                                               diffusion.c_noise(both_sig))
            l_fake, l_real = logits[:b], logits[b:]
            disc = distill.discriminator_loss(l_real, l_fake)
            acc = 0.5 * (jnp.mean(l_real > 0) + jnp.mean(l_fake < 0))
            return dsm + cfg.disc_loss_weight * disc, (dsm, disc, acc)

        (_, (dsm, disc, acc)), (g_fake, g_disc) = jax.value_and_grad(
            loss_fn, (0, 1), has_aux=True)(state["fake_score"].params,
                                           state["discriminator"].params)
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
                xt, sig, x0_fake, x0_teacher, logit, divergence,
                x=x if cfg.dmd_normalize else None, normalize=cfg.normalize_weights,
                logit_clip=cfg.logit_clip, ratio_clip=ratio_clip)
            gan = distill.generator_gan_loss(logit)
            return surrogate + cfg.gan_weight * gan, (surrogate, gan, logit)

        (_, (surrogate, gan, logit)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["generator"].params)
        state = state.apply_gradients(generator=grads)
        h = distill.weights(logit, divergence, logit_clip=cfg.logit_clip,
                            ratio_clip=ratio_clip, normalize=False)
        return state, {"gen_surrogate": surrogate, "gen_gan_loss": gan,
                       "weight_cv": jnp.std(h) / (jnp.mean(h) + 1e-12),
                       "log_ratio_mean": jnp.mean(logit)}

    return critic_step, generator_step


@functools.partial(jax.jit, static_argnames=("ema",))
def _generate(net: train.Net, z, ema: bool = False):
    return net.merge(ema=ema)(z)


def _generator_samples(state, cfg: FDistillConfig, problem: _Problem, ema: bool):
    z = jax.random.normal(jax.random.fold_in(jax.random.key(cfg.eval_seed), 3),
                          (problem.num_eval,) + problem.shape)
    return np.asarray(_generate(state["generator"], z, ema=ema))


# ---------------------------------------------------------------------------------------------
# Entry point.


def _validate(cfg: FDistillConfig) -> None:
    """Fails before any training on settings that would fail later."""
    distill.resolve_divergence(cfg.divergence)  # a divergence without weight h
    if cfg.generator_every < 1:
        raise ValueError(f"config.generator_every must be >= 1, got {cfg.generator_every}.")
    if cfg.disc_features not in ("fake", "teacher"):
        raise ValueError(f"config.disc_features must be 'fake' or 'teacher', got "
                         f"{cfg.disc_features!r}.")
    if not 0.0 <= cfg.generator_sigma < float("inf"):
        raise ValueError(f"config.generator_sigma must be 0 (use teacher.sigma_max) or a "
                         f"positive noise level, got {cfg.generator_sigma}.")
    if cfg.lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"config.lr_schedule must be 'constant' or 'cosine', got "
                         f"{cfg.lr_schedule!r}.")
    if cfg.teacher.net.kind not in ("mlp", "unet"):
        raise ValueError(f"config.teacher.net.kind must be 'mlp' or 'unet', got "
                         f"{cfg.teacher.net.kind!r}.")


@dataclasses.dataclass
class Distillation:
    """Everything a distillation run (or a step benchmark) needs, built by `build`.

    ``critic_step(state, batch) -> (state, metrics)`` updates the fake score and the
    discriminator; ``generator_step(state) -> (state, metrics)`` updates the generator;
    ``batch_fn(step)`` gives loop step ``step``'s data batch (``None`` for toy targets, which
    are sampled inside the step).
    """

    cfg: FDistillConfig
    problem: _Problem
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

    def loop_step(self, state, step: int):
        """Loop step ``step``: a critic update, and a generator update every
        ``generator_every``-th step."""
        state, m = self.critic_step(state, self.batch_fn(step))
        if (step + 1) % self.cfg.generator_every == 0:
            state, gm = self.generator_step(state)
            m = {**m, **gm}
        return state, m


def build(config: Any, print_fn=None) -> Distillation:
    """Validates ``config``, trains or restores the teacher, builds the state and the steps."""
    train.check_config(config)
    cfg = train.to_dataclass(FDistillConfig, config)
    _validate(cfg)
    mesh = sharding.make_mesh()
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev:
        raise ValueError(f"config.batch_size={cfg.batch_size} must be a multiple of the "
                         f"{n_dev} devices.")
    pf = print_fn or (lambda s: print(s, flush=True))
    problem = _Problem(cfg, mesh)
    teacher, tdir, sigma_data, _ = load_or_train_teacher(cfg, problem, mesh,
                                                         print_fn=lambda s: pf(f"[teacher] {s}"))
    teacher_eval, teacher_x = teacher_reference(cfg, problem, teacher, tdir)
    state = sharding.replicate(_make_state(cfg, teacher), mesh)
    critic_step, generator_step = _make_steps(cfg, problem, sigma_data, mesh)
    batcher = problem.batcher(cfg.batch_size, cfg.seed + 1)
    batch_fn = batcher if batcher is not None else (lambda step: None)
    return Distillation(cfg, problem, mesh, teacher, tdir, teacher_eval, teacher_x, sigma_data,
                        state, critic_step, generator_step, batch_fn)


def train_and_evaluate(config: Any, workdir: str, print_fn=None) -> dict:
    """Trains (or restores) the teacher, distils it with ``config.divergence``, evaluates.

    Returns:
      The run summary (also ``<workdir>/summary.json``): the `fdiv.train.fit` fields plus
      ``teacher`` (metrics of the teacher's Heun sampler, its number of network evaluations
      and sampling time), ``generator_init`` (one-step generator at initialisation),
      ``student`` (final one-step metrics), ``target`` (toy targets: metrics of a fresh
      target draw, the sampling-noise floor; else None), ``divergence``, ``data``, ``teacher_dir``,
      ``teacher_train_sec`` / ``distill_sec`` (wall time of this call's two phases) and
      ``num_devices``.
    """
    pf = print_fn or (lambda s: print(s, flush=True))
    t0 = time.perf_counter()
    run = build(config, print_fn=pf)
    cfg, problem, teacher_eval, teacher_x = run.cfg, run.problem, run.teacher_eval, run.teacher_samples
    teacher_sec = time.perf_counter() - t0
    os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
    np.save(os.path.join(workdir, "samples", "teacher.npy"), teacher_x)
    problem.plot(teacher_x, os.path.join(workdir, "samples", "teacher.png"),
                 f"teacher, Heun {teacher_eval['num_evaluations']} evaluations")
    pf(f"teacher ({run.teacher_dir}): " + _fmt(teacher_eval))

    t1 = time.perf_counter()
    init_x = _generator_samples(run.state, cfg, problem, ema=False)
    init_eval = problem.evaluate(init_x)
    problem.plot(init_x, os.path.join(workdir, "samples", "generator_init.png"),
                 "generator at initialisation (1 evaluation)")
    pf("generator at init: " + _fmt(init_eval))
    ema = bool(cfg.generator_ema)

    def eval_fn(state):
        x = _generator_samples(state, cfg, problem, ema=ema)
        result = problem.evaluate(x)
        step = int(state.step)
        problem.plot(x, os.path.join(workdir, "samples", f"student_{step:07d}.png"),
                     f"one-step student ({cfg.divergence}), step {step}")
        np.save(os.path.join(workdir, "samples", "student_latest.npy"), x)
        return result

    target_eval = problem.target_reference()
    if target_eval is not None:
        pf("fresh target samples: " + _fmt(target_eval))
    meta = {"config": config.to_dict(), "teacher": teacher_eval, "generator_init": init_eval,
            "target": target_eval,
            "divergence": cfg.divergence, "data": cfg.data, "teacher_dir": run.teacher_dir,
            "num_devices": int(run.mesh.devices.size)}
    state, summary = train.fit(run.state, run.loop_step, workdir=workdir,
                               options=train.LoopOptions.from_config(config),
                               eval_fn=eval_fn, meta=meta, print_fn=print_fn)
    final = {k[len("eval/"):]: v for k, v in (summary.get("eval") or {}).items()}
    summary = {**summary, "student": final, "teacher_train_sec": teacher_sec,
               "distill_sec": time.perf_counter() - t1}
    train.write_summary(workdir, summary)
    pf("one-step student: " + _fmt(final))
    return summary


def _fmt(m: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                     for k, v in m.items())
