"""fdiv: training generative models by minimising f-divergences, in JAX.

Convention everywhere (docs/reference.md section 1): P is the target (teacher, data), Q the model (student,
generator); ``D_f(P || Q) = E_Q[f(p/q)]`` and every function works with log-probabilities.

The top level re-exports the divergence family and the estimators, which are pure functions of
arrays. Training code lives in submodules that are imported explicitly:

* ``fdiv.divergences``: :class:`FDivergence`, :func:`get`, :func:`names`, :func:`from_generator`.
* ``fdiv.discrete``: exact divergences between categorical distributions given by logits.
* ``fdiv.montecarlo``: estimates from samples with log-densities, with standard errors.
* ``fdiv.variational``: variational lower bounds from critic outputs (log-ratio critic for every
  f, f-GAN, NWJ, DV, InfoNCE), classifier losses and ratios; ``fdiv.critic.train_critic``.
* ``fdiv.kernel``: MMD^2 and the kernel Cauchy-Schwarz divergence, blockwise.
* ``fdiv.transport``: Sinkhorn divergences and SinKD through ott-jax (import it explicitly:
  it loads ott-jax).
* ``fdiv.kd``: knowledge-distillation losses (KD, any divergence, NKD, BD-KD, top-k offline
  teacher, SinKD) and the fused large-vocabulary loss.
* ``fdiv.policy``: f-DPG pseudo-rewards, surrogate loss, running normaliser and baselines.
* ``fdiv.distill``: f-distill weights and losses (docs/reference.md section 4).
* ``fdiv.diffusion``: EDM preconditioning, denoising score matching, Heun/Euler samplers.
* ``fdiv.metrics``: sample-quality metrics (mode coverage, energy distance, MMD, Frechet).
* ``fdiv.nets`` (Flax NNX networks, the Llama decoder with its GGUF loader and KV-cache
  sampling), ``fdiv.data`` (offline data sets), ``fdiv.train``
  (sharded multi-network training, Orbax checkpoints, metric writers): import them directly.
"""

from fdiv import diffusion, distill, divergences, kd, kernel, metrics, policy, variational
from fdiv.discrete import (
    categorical_divergence,
    cauchy_schwarz,
    generalized_jsd,
    skew_kl,
    skew_reverse_kl,
)
from fdiv.divergences import FDivergence, dual, from_generator, get, names
from fdiv.montecarlo import (
    mc_divergence_from_both_samples,
    mc_divergence_from_model_samples,
    mc_divergence_from_target_samples,
    mc_divergence_self_normalized,
    mc_log_normalizer,
)

__version__ = "0.1.0"

__all__ = [
    "FDivergence",
    "categorical_divergence",
    "cauchy_schwarz",
    "diffusion",
    "distill",
    "divergences",
    "dual",
    "from_generator",
    "generalized_jsd",
    "get",
    "kd",
    "kernel",
    "mc_divergence_from_both_samples",
    "mc_divergence_from_model_samples",
    "mc_divergence_from_target_samples",
    "mc_divergence_self_normalized",
    "mc_log_normalizer",
    "metrics",
    "names",
    "policy",
    "skew_kl",
    "skew_reverse_kl",
    "variational",
]
