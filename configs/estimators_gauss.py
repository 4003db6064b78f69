r"""Sample-based divergence estimators against known truth (experiment ``estimators``).

The base config is the experiment's typed defaults (`experiments.settings.EstimatorsConfig`).
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

import configs
from experiments import settings


def base():
    return settings.to_config_dict(settings.EstimatorsConfig())


def variant_quick(c):
    c.pairs = c.pairs[:1]  # gauss_d1
    c.sizes = (64, 256)
    c.seeds = 2
    c.truth_samples = 20_000
    c.kernel_max_n = 256
    c.critic_sizes = (256,)
    c.critic_seeds = 1
    c.critic_pairs = ("gauss_d1",)
    c.critic_divergences = ("forward_kl",)
    c.critic_steps = 50
    c.critic_batch = 64
    c.critic_hidden = (16,)
    c.checkpoint_every = 2
    c.num_steps = len(c.pairs) * len(c.sizes) * c.seeds  # one step per (pair, size, seed) cell
    return c


def get_config(arg=None):
    return configs.build(globals(), arg)
