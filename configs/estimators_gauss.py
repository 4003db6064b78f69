r"""Sample-based divergence estimators against known truth (experiment ``estimators``).

Run:

    python -m experiments.main --config=configs/estimators_gauss.py --workdir=runs/estimators

Pairs: P = N(0, I), Q = N(shift, 1.2^2 I) with ||shift|| = 0.5 in dimensions 1, 4, 16, and a
1-D two-component mixture P against one Gaussian Q. Sizes 256..16384 (factors of 4), 10 seeds
for Monte Carlo and kernels (2 seeds at n = 16384 for the kernels), critics (4 bounds and a
classifier per cell, 600 Adam steps, trained on n/2 samples, early-stopped every 25 steps on
the validation objective of n/4, evaluated on the last n/4) at n = 1024 and 16384 for 10 seeds
on the 1-D and 16-D Gaussians and the mixture. Measured on the shared 2-core CPU: 3 min 01 s
wall clock, 257 s CPU, peak RSS 2.0 GiB (160 cells, 60 of them with critics).

Variant ``quick``: one small pair, two sizes, two seeds, one KL critic and one classifier of
50 steps (about 60 s on the loaded 2-core CPU, mostly compilation).
"""

import ml_collections

import configs


def _pair(name, kind, dim, shift=0.5, scale=1.2):
    p = ml_collections.ConfigDict()
    p.name, p.kind, p.dim, p.shift, p.scale = name, kind, dim, shift, scale
    return p


def base():
    c = ml_collections.ConfigDict()
    c.experiment = "estimators"
    c.pairs = [
        _pair("gauss_d1", "gauss", 1),
        _pair("gauss_d4", "gauss", 4),
        _pair("gauss_d16", "gauss", 16),
        _pair("mixture_d1", "mixture", 1),
    ]
    c.sizes = [256, 1024, 4096, 16384]
    c.seeds = 10
    c.truth_samples = 2_000_000
    c.kernel_max_n = 4096  # above this size the kernels run for kernel_large_seeds seeds only
    c.kernel_large_seeds = 2
    c.block = 2048
    c.critic_sizes = [1024, 16384]
    c.critic_seeds = 10
    c.critic_pairs = ["gauss_d1", "gauss_d16", "mixture_d1"]
    c.critic_divergences = ["forward_kl", "js", "squared_hellinger", "pearson"]
    c.critic_steps = 600
    c.critic_batch = 256
    c.critic_hidden = [64, 64]
    c.critic_lr = 2e-3
    c.critic_eval_every = 25  # validation checks for early stopping
    c.critic_weight_decay = 0.0
    c.checkpoint_every = 8
    c.num_steps = len(c.pairs) * len(c.sizes) * c.seeds  # one step per (pair, size, seed) cell
    return c


def variant_quick(c):
    c.pairs = [_pair("gauss_d1", "gauss", 1)]
    c.sizes = [64, 256]
    c.seeds = 2
    c.truth_samples = 20_000
    c.kernel_max_n = 256
    c.critic_sizes = [256]
    c.critic_seeds = 1
    c.critic_pairs = ["gauss_d1"]
    c.critic_divergences = ["forward_kl"]
    c.critic_steps = 50
    c.critic_batch = 64
    c.critic_hidden = [16]
    c.checkpoint_every = 2
    c.num_steps = len(c.pairs) * len(c.sizes) * c.seeds
    return c


def get_config(arg=None):
    return configs.build(globals(), arg)
