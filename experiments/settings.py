"""Typed configs of the experiments and their stages: the one place where defaults live.

Every experiment reads its `ml_collections.ConfigDict` into one of the frozen dataclasses
below at its boundary (as vdm converts its config before the model sees it); networks and
estimators only ever see the typed values. The base config of each experiment
(``configs/<experiment>*.py``) is *generated* from the dataclass defaults by `to_config_dict`,
so a default exists exactly once; `tests/test_configs.py` checks that a base config read back
with `from_config` equals the dataclass defaults.

Loop fields (`fdiv.train.LoopOptions`: ``num_steps``, ``log_every``, ..., ``resume``) are
one typed ``loop`` field here, but flat in the ConfigDict (``config.num_steps``,
``config.teacher.num_steps``, ``--config.resume=restart``), where a user expects them.

`validate(cfg)` checks a whole typed config and raises one `fdiv.train.config.ConfigError`
with one message per bad field (non-positive batch sizes, step counts and learning rates,
unknown or weightless divergences with the nearest name suggested).

Decisions: the stage configs (`TeacherConfig`, `ClassifierConfig`) live here, below the
experiments that use them, so that a stage never imports its user; this module imports only
the standard library, ml_collections and `fdiv.train.config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from typing import Any, Mapping

import ml_collections
from ml_collections import config_dict

from fdiv.train.config import ConfigError, LoopOptions, loop_problems

LOOP_FIELDS = tuple(f.name for f in dataclasses.fields(LoopOptions))

# Parameters of the parametrised divergences (`fdiv.get("alpha", alpha=...)`,
# `fdiv.get("t_power", t=...)`): placeholders in the ConfigDict, so that the locked config
# accepts ``--config.divergence_kw.alpha=0.3``; unset ones are not passed.
DIVERGENCE_PARAMS = ("alpha", "t")


# ---------------------------------------------------------------------------------------------
# Stage configs.


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """Raw network of an EDM denoiser: ``kind`` "mlp" (vectors) or "unet" (images)."""

    kind: str = "mlp"
    hidden: int = 128
    depth: int = 3
    emb_dim: int = 32
    base: int = 32
    channel_mult: tuple[int, ...] = (1, 2)
    num_res: int = 1


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """EDM teacher: network, denoising score matching and sampler (docs/reference.md section 6).

    ``sample_steps``, ``sigma_min``, ``sigma_max`` and ``rho`` only set the sampler, and the
    loop fields other than ``num_steps`` only set logging and checkpointing: neither changes
    the trained network, so neither is part of its cache key (`model_key`).
    """

    net: NetConfig = NetConfig()
    seed: int = 0
    batch_size: int = 512
    learning_rate: float = 2e-3
    warmup_steps: int = 100
    ema_decay: float = 0.0  # 0: no parameter average
    # Mode std 0.08 and sigma_data ~1.4 (ring8): noise levels from ~0.02 to ~10 matter.
    p_mean: float = -1.0
    p_std: float = 1.6
    sigma_data: float = 0.0  # 0: measured from the data
    sigma_min: float = 0.002
    sigma_max: float = 20.0
    rho: float = 7.0
    sample_steps: int = 18  # Heun: 2N - 1 = 35 evaluations
    loop: LoopOptions = LoopOptions(
        num_steps=4000, log_every=1000, checkpoint_every_steps=0, keep_checkpoints=1
    )

    SAMPLER_FIELDS: typing.ClassVar[tuple[str, ...]] = (
        "sample_steps",
        "sigma_min",
        "sigma_max",
        "rho",
    )

    def model_key(self) -> dict:
        """The fields that change the trained network (the cache key)."""
        d = dataclasses.asdict(self)
        for f in self.SAMPLER_FIELDS:
            d.pop(f)
        d["num_steps"] = d.pop("loop")["num_steps"]
        return d


@dataclasses.dataclass(frozen=True)
class EDMTeacherConfig:
    """The EDM teacher stage as an experiment (``experiments.edm_teacher``)."""

    experiment: str = "edm_teacher"
    data: str = "ring8"
    cache_dir: str = ""  # "": $FDIV_CACHE or ~/.cache/fdiv
    teacher: TeacherConfig = TeacherConfig()
    eval_samples: int = 4000  # docs/reference.md section 8 metrics of the sampler
    eval_seed: int = 1234


@dataclasses.dataclass(frozen=True)
class ClassifierModelConfig:
    """Network shape (see `fdiv.nets.classifier.Classifier`)."""

    kind: str = "cnn"
    channels: tuple[int, ...] = (16, 32)
    hidden: int = 128


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Image classifier, also the feature extractor of image Frechet distances."""

    experiment: str = "classifier"
    dataset: str = "digits"
    seed: int = 0
    cache_dir: str = ""  # where `classifier.load_or_train` caches it
    batch_size: int = 128
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    max_train_examples: int = 0  # 0: all (1438 digits)
    max_test_examples: int = 0  # 0: all
    eval_batch_size: int = 256
    model: ClassifierModelConfig = ClassifierModelConfig()
    loop: LoopOptions = LoopOptions(
        num_steps=600, log_every=100, eval_every=200, checkpoint_every_steps=200, keep_checkpoints=2
    )

    def model_key(self) -> dict:
        """The fields that change the trained network (the cache key)."""
        d = dataclasses.asdict(self)
        for f in ("experiment", "cache_dir", "eval_batch_size", "max_test_examples"):
            d.pop(f)
        d["num_steps"] = d.pop("loop")["num_steps"]
        return d


# ---------------------------------------------------------------------------------------------
# f-distill.


@dataclasses.dataclass(frozen=True)
class FDistillConfig:
    """f-distill of an EDM teacher into a one-step generator (docs/reference.md section 4).

    The defaults are the ring8 main job (``configs/fdistill_toy2d.py``).
    """

    experiment: str = "fdistill"
    data: str = "ring8"
    seed: int = 0
    cache_dir: str = ""  # "": $FDIV_CACHE or ~/.cache/fdiv
    teacher: TeacherConfig = TeacherConfig()
    # Image data: the feature classifier of the Frechet distance (None for toy targets).
    classifier: ClassifierConfig | None = None
    # Jensen-Shannon: the f-distill paper's recommended divergence; all 8 ring modes.
    divergence: str = "js"
    divergence_kw: Mapping[str, float] = dataclasses.field(default_factory=dict)
    batch_size: int = 256
    generator_every: int = 2  # critic (fake score + discriminator) updates per generator update
    gan_weight: float = 1e-2
    generator_lr: float = 5e-4
    fake_lr: float = 1e-3
    disc_lr: float = 1e-3
    adam_b1: float = 0.0
    adam_b2: float = 0.999
    lr_schedule: str = "cosine"  # or "constant"; cosine decays to final_lr_fraction
    final_lr_fraction: float = 0.1
    generator_ema: float = 0.99  # evaluated generator: EMA over ~100 generator updates (0: raw)
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
    eval_samples: int = 4000  # docs/reference.md section 8 metrics
    eval_ed_samples: int = 20000  # toy targets: energy distance with ~10x less sampling noise
    eval_seed: int = 1234
    # Loop steps = critic updates (3000 generator updates).
    loop: LoopOptions = LoopOptions(
        num_steps=6000,
        log_every=500,
        eval_every=2000,
        checkpoint_every_steps=2000,
        keep_checkpoints=2,
    )

    def teacher_stage(self) -> EDMTeacherConfig:
        """The teacher stage this run loads or trains."""
        return EDMTeacherConfig(
            data=self.data,
            cache_dir=self.cache_dir,
            teacher=self.teacher,
            eval_samples=self.eval_samples,
            eval_seed=self.eval_seed,
        )

    def classifier_stage(self) -> ClassifierConfig | None:
        """The feature classifier this run loads or trains (image data only)."""
        if self.classifier is None:
            return None
        return dataclasses.replace(self.classifier, cache_dir=self.cache_dir)


# ---------------------------------------------------------------------------------------------
# ConfigDict <-> dataclass.


def _optional_dataclass(t: Any) -> type | None:
    if isinstance(t, type) and dataclasses.is_dataclass(t):
        return t
    args = [a for a in typing.get_args(t) if a is not type(None)]
    if len(args) == 1 and isinstance(args[0], type) and dataclasses.is_dataclass(args[0]):
        return args[0]
    return None


def to_config_dict(obj: Any) -> ml_collections.ConfigDict:
    """The ConfigDict of a typed config (loop fields flat, unset sub-configs omitted)."""
    out = ml_collections.ConfigDict()
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, LoopOptions):
            for k in LOOP_FIELDS:
                out[k] = getattr(v, k)
        elif dataclasses.is_dataclass(v):
            out[f.name] = to_config_dict(v)
        elif v is None:
            continue
        elif f.name == "divergence_kw":
            kw = ml_collections.ConfigDict()
            for k in DIVERGENCE_PARAMS:
                kw[k] = v[k] if k in v else config_dict.placeholder(float)
            out[f.name] = kw
        else:
            out[f.name] = v
    return out


def _as_dict(config: Any) -> dict:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, Mapping):
        return dict(config)
    raise ConfigError(f"expected a ConfigDict or mapping, got {type(config).__name__}")


def _unknown(name: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return f"{hint}valid fields: {', '.join(valid)}"


def _convert(cls: type, data: dict, path: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    has_loop = any(hints[n] is LoopOptions for n in fields)
    valid = [n for n in fields if hints[n] is not LoopOptions] + (
        list(LOOP_FIELDS) if has_loop else []
    )
    kwargs: dict[str, Any] = {}
    loop_values: dict[str, Any] = {}
    for k, v in data.items():
        if has_loop and k in LOOP_FIELDS:
            loop_values[k] = v
            continue
        if k not in fields or hints[k] is LoopOptions:
            problems.append(f"{path}{k} is not a field ({_unknown(k, valid)})")
            continue
        t = hints[k]
        sub = _optional_dataclass(t)
        if sub is not None and isinstance(v, Mapping):
            v = _convert(sub, dict(v), f"{path}{k}.", problems)
        elif isinstance(v, list) and typing.get_origin(t) is tuple:
            v = tuple(v)
        elif k == "divergence_kw":
            v = {p: float(x) for p, x in (v or {}).items() if x is not None}
        kwargs[k] = v
    for name in fields:
        if hints[name] is LoopOptions:
            bad = loop_problems(loop_values, prefix=path)
            problems.extend(bad)
            default = fields[name].default
            kwargs[name] = default if bad else dataclasses.replace(default, **loop_values)
    return cls(**kwargs)


def from_config(cls: type, config: Any) -> Any:
    """Reads a ConfigDict (or nested mapping) into the typed config `cls`.

    Missing fields take the dataclass defaults.

    Raises:
      ConfigError: one message per unknown field (with the nearest valid name) or bad loop
        field.
    """
    problems: list[str] = []
    nan = [p for p, v in _walk(_as_dict(config), "") if isinstance(v, float) and math.isnan(v)]
    problems.extend(f"config.{p} is NaN; set a number" for p in nan)
    cfg = _convert(cls, _as_dict(config), "config.", problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def _walk(x: Any, path: str):
    if isinstance(x, Mapping):
        for k, v in x.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, x


# ---------------------------------------------------------------------------------------------
# Validation.


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _field_problems(obj: Any, path: str) -> list[str]:
    """Generic checks by field name, recursing into sub-configs."""
    out = []
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        name = f"{path}{f.name}"
        if isinstance(v, LoopOptions):
            if v.num_steps <= 0:
                out.append(f"{path}num_steps={v.num_steps} must be > 0")
        elif dataclasses.is_dataclass(v):
            out.extend(_field_problems(v, f"{name}."))
        elif f.name == "batch_size" or f.name.endswith("_batch_size"):
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                out.append(f"{name}={v!r} must be a positive int")
        elif f.name in ("learning_rate", "lr") or f.name.endswith("_lr"):
            if not _is_number(v) or not v > 0 or math.isinf(v):
                out.append(f"{name}={v!r} must be a finite number > 0")
    return out


def divergence_problem(
    name: Any, kw: Mapping[str, float], field: str = "config.divergence"
) -> str | None:
    """The message for a divergence that f-distill cannot use, or None.

    Unknown names get the nearest registered name (or alias); divergences without an
    f-distill weight h get the list of those that have one.
    """
    from fdiv import distill, divergences

    try:
        d = divergences.get(name, **kw)
    except ValueError as e:
        known = list(divergences.names()) + list(getattr(divergences, "_ALIASES", {}))
        if isinstance(name, str) and name not in known:
            near = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f"did you mean {near[0]!r}? " if near else ""
            return (
                f"{field}={name!r} is not a divergence; {hint}registered: "
                f"{', '.join(divergences.names())}"
            )
        return f"{field}={name!r}{' with ' + str(dict(kw)) if kw else ''}: {e}".rstrip(".")
    try:
        distill.resolve_divergence(d)
    except ValueError as e:
        return f"{field}={name!r}: {e}".rstrip(".")
    return None


def problems(cfg: Any) -> list[str]:
    """Every bad field of a typed config, one message each (empty when it is fine)."""
    out = _field_problems(cfg, "config.")
    if isinstance(cfg, FDistillConfig):
        p = divergence_problem(cfg.divergence, cfg.divergence_kw)
        if p:
            out.append(p + " (set --config.divergence and --config.divergence_kw.*)")
        if cfg.generator_every < 1:
            out.append(f"config.generator_every={cfg.generator_every} must be >= 1")
        if cfg.disc_features not in ("fake", "teacher"):
            out.append(f"config.disc_features={cfg.disc_features!r} must be 'fake' or 'teacher'")
        if not 0.0 <= cfg.generator_sigma < float("inf"):
            out.append(
                f"config.generator_sigma must be 0 (use teacher.sigma_max) or a positive "
                f"noise level, got {cfg.generator_sigma}"
            )
        if cfg.lr_schedule not in ("constant", "cosine"):
            out.append(f"config.lr_schedule={cfg.lr_schedule!r} must be 'constant' or 'cosine'")
    for teacher in _teachers(cfg):
        if teacher.net.kind not in ("mlp", "unet"):
            out.append(f"config.teacher.net.kind={teacher.net.kind!r} must be 'mlp' or 'unet'")
    return out


def _teachers(cfg: Any) -> list[TeacherConfig]:
    t = getattr(cfg, "teacher", None)
    return [t] if isinstance(t, TeacherConfig) else []


def workdir_problem(workdir: Any) -> str | None:
    """The message for a workdir that cannot be created or written, or None.

    Creates the directory (a run creates it anyway) and writes and removes a probe file.
    """
    import os
    import tempfile

    if not isinstance(workdir, str) or not workdir:
        return f"--workdir must be a directory path, got {workdir!r}"
    try:
        os.makedirs(workdir, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_probe_"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        return (
            f"--workdir={workdir} cannot be created or written ({reason}); pass a "
            f"directory you can write to"
        )
    return None


def validate(cfg: Any, workdir: str | None = None) -> Any:
    """Returns `cfg` when every field (and `workdir`, when given) is fine.

    Raises:
      ConfigError: one message per bad field.
    """
    p = problems(cfg)
    if workdir is not None:
        w = workdir_problem(workdir)
        if w:
            p.append(w)
    if p:
        raise ConfigError(p)
    return cfg


def read(cls: type, config: Any, workdir: str | None = None) -> Any:
    """`from_config` then `validate`: the typed, checked config of an experiment.

    Raises:
      ConfigError: one message per bad field, the unknown fields of `config` included.
    """
    if isinstance(config, cls):
        return validate(config, workdir)
    try:
        cfg = from_config(cls, config)
    except ConfigError as e:
        # Report the field problems of what could be read as well, all at once.
        extra = [] if workdir is None else [w for w in [workdir_problem(workdir)] if w]
        raise ConfigError(e.problems + extra) from None
    return validate(cfg, workdir)


# ---------------------------------------------------------------------------------------------
# f-DPG.


@dataclasses.dataclass(frozen=True)
class FDPGLMConfig:
    """pi_0 of the fdpg experiment: a character-level causal transformer on Shakespeare.

    The loop fields other than ``num_steps`` only set logging and checkpointing, so they are
    not part of the stage's cache key (`model_key`).
    """

    max_chars: int = 0  # 0: the whole corpus (about 5 M characters)
    context: int = 64
    d_model: int = 64
    num_layers: int = 2
    num_heads: int = 4
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    seed: int = 0
    loop: LoopOptions = LoopOptions(
        num_steps=800,
        log_every=250,
        checkpoint_every_steps=200,
        checkpoint_every_secs=300.0,
        keep_checkpoints=1,
    )

    def model_key(self) -> dict:
        """The fields that change the trained network (the cache key)."""
        d = dataclasses.asdict(self)
        d["num_steps"] = d.pop("loop")["num_steps"]
        return d


FDPG_MODELS = ("char", "smollm2")
FDPG_SAMPLERS = ("policy", "proposal")
FDPG_BASELINES = ("ema", "windowed", "none")


@dataclasses.dataclass(frozen=True)
class FDPGConfig:
    """f-DPG: align pi_0 to ``p(x) proportional to pi_0(x) b(x)`` (docs/reference.md section 5).

    ``b(x) = 1`` when the sample contains ``word``. ``model`` "char" is the cached character
    transformer `lm` (samples of ``sample_len`` characters after a newline); "smollm2" is
    SmolLM2-135M-Instruct from its GGUF file (``sample_len`` tokens answering ``prompt``, the
    word matched case-insensitively as a whole word). Every divergence of ``divergences`` runs
    with ``sampler`` and every one of ``proposal_divergences`` also with DPG's proposal
    sampler, each for every seed of ``seeds``; the defaults are the measured comparison of
    ``configs/fdpg.py``.
    """

    experiment: str = "fdpg"
    seeds: tuple[int, ...] = (0, 1, 2)
    eval_seed: int = 1234  # the pi_0 samples that estimate Z = P_pi0(b = 1)
    cache_dir: str = ""  # "": $FDIV_CACHE or ~/.cache/fdiv
    model: str = "char"
    lm: FDPGLMConfig = FDPGLMConfig()
    prompt: str = "Write one sentence about the weather."  # model "smollm2" only
    word: str = "love"
    sample_len: int = 32
    # Training target: violations get log b = -violation_log_penalty instead of -inf, so reverse
    # KL (infinite against the exact restriction) is finite; the metrics use the exact target.
    violation_log_penalty: float = 10.0
    divergences: tuple[str, ...] = ("forward_kl", "reverse_kl", "js", "total_variation")
    sampler: str = "policy"  # "policy" (on-policy) or "proposal" (DPG's offline mode)
    proposal_divergences: tuple[str, ...] = ("forward_kl", "js")
    proposal_every: int = 25  # steps between proposal checks
    batch_size: int = 128
    # At 1e-3 forward KL, JS and TV left pi_0 by 25-130 nats within 150 steps (3 seeds);
    # 5e-4 kept JS aligned over 400 steps (one seed).
    learning_rate: float = 5e-4
    grad_clip: float = 1.0
    baseline: str = "ema"
    baseline_decay: float = 0.9
    baseline_window: int = 1024
    eval_samples: int = 1024
    z_samples: int = 4096
    show_samples: int = 8
    loop: LoopOptions = LoopOptions(
        num_steps=150,
        log_every=25,
        eval_every=25,
        checkpoint_every_steps=100,
        checkpoint_every_secs=300.0,
        keep_checkpoints=1,
    )

    def runs(self) -> tuple[tuple[str, str, str], ...]:
        """``(label, divergence, sampler)`` of every aligned run, in table order."""
        main = tuple(
            (d if self.sampler == "policy" else f"{d}_proposal", d, self.sampler)
            for d in self.divergences
        )
        return main + tuple((f"{d}_proposal", d, "proposal") for d in self.proposal_divergences)


def fdpg_problems(cfg: FDPGConfig) -> list[str]:
    """The fdpg-specific problems of a typed `FDPGConfig`, one message each."""
    from fdiv import divergences

    out = []
    for field, values in (
        ("divergences", cfg.divergences),
        ("proposal_divergences", cfg.proposal_divergences),
    ):
        for i, name in enumerate(values):
            try:
                divergences.get(name)
            except (ValueError, TypeError):
                near = difflib.get_close_matches(str(name), divergences.names(), n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                out.append(
                    f"config.{field}[{i}]={name!r} is an unknown divergence; {hint}registered: "
                    f"{', '.join(divergences.names())}"
                )
    if not cfg.divergences and not cfg.proposal_divergences:
        out.append("config.divergences is empty; list e.g. ('forward_kl', 'js')")
    labels = [label for label, _, _ in cfg.runs()]
    if len(set(labels)) != len(labels):
        out.append(
            f"config.proposal_divergences={cfg.proposal_divergences} repeats runs of "
            f"config.divergences with config.sampler='proposal'; set one of them to ()"
        )
    for field, value, valid in (
        ("model", cfg.model, FDPG_MODELS),
        ("sampler", cfg.sampler, FDPG_SAMPLERS),
        ("baseline", cfg.baseline, FDPG_BASELINES),
    ):
        if value not in valid:
            out.append(f"config.{field}={value!r} must be one of {', '.join(map(repr, valid))}")
    if not cfg.seeds or not all(isinstance(s, int) and s >= 0 for s in cfg.seeds):
        out.append(f"config.seeds={cfg.seeds!r} must be a non-empty tuple of ints >= 0")
    elif len(set(cfg.seeds)) != len(cfg.seeds):
        out.append(f"config.seeds={cfg.seeds!r} repeats a seed")
    if not cfg.word:
        out.append("config.word must be a non-empty string")
    if cfg.sample_len < 1:
        out.append(f"config.sample_len={cfg.sample_len} must be >= 1")
    elif cfg.model == "char" and cfg.sample_len + 1 > cfg.lm.context:
        out.append(
            f"config.sample_len + 1 = {cfg.sample_len + 1} exceeds the model's context "
            f"config.lm.context = {cfg.lm.context}; shorten sample_len or lengthen the context"
        )
    if cfg.model == "char" and len(cfg.word) > cfg.sample_len:
        out.append(f"config.word={cfg.word!r} is longer than config.sample_len={cfg.sample_len}")
    for field in ("proposal_every", "eval_samples", "z_samples", "baseline_window"):
        if getattr(cfg, field) < 1:
            out.append(f"config.{field}={getattr(cfg, field)} must be >= 1")
    if not 0.0 <= cfg.baseline_decay < 1.0:
        out.append(f"config.baseline_decay={cfg.baseline_decay} must lie in [0, 1)")
    if not cfg.violation_log_penalty > 0.0 or math.isinf(cfg.violation_log_penalty):
        out.append(
            f"config.violation_log_penalty={cfg.violation_log_penalty} must be a finite number > 0"
        )
    if not cfg.grad_clip > 0.0:
        out.append(f"config.grad_clip={cfg.grad_clip} must be > 0")
    return out
