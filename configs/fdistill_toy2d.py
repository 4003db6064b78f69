r"""f-distill on a 2-D toy target (docs/reference.md section 8): EDM MLP teacher, one-step student.

The base config is the f-distill experiment's typed defaults (`experiments.settings.FDistillConfig`):
ring8, Jensen-Shannon. Run (the teacher is trained once into the cache and reused):

    python -m experiments.main --config=configs/fdistill_toy2d.py --workdir=runs/fdistill_toy2d
    python -m experiments.main --config=configs/fdistill_toy2d.py --workdir=runs/toy_rkl \
        --config.divergence=reverse_kl
    python -m experiments.main --config=configs/fdistill_toy2d.py --workdir=runs/toy_alpha \
        --config.divergence=alpha --config.divergence_kw.alpha=0.5

Variants: ``grid25`` (25-mode grid target; the generator starts from noise level 0.5, not
sigma_max, and uses its own noise levels, GAN weight and learning rate: about 3.5 minutes end
to end on the loaded CPU), ``quick`` (a few steps, tiny teacher; seconds), ``grid25_quick``.
Measured on the 2-core CPU (ring8): teacher 23 s (first run only, 4000 steps), distillation
79 s (6000 steps, ~86 steps/s, evaluations included), 104 s end to end with a fresh cache; up
to about 4 minutes when the machine is heavily loaded.
Any divergence with a weight h (``fdiv.names()`` minus total_variation) can be chosen with
``--config.divergence=NAME`` (parameters through ``--config.divergence_kw.*``).
"""

import configs
from experiments import settings


def base():
    return settings.to_config_dict(settings.FDistillConfig())


def variant_grid25(c):
    c.data = "grid25"
    # From sigma_max = 20 the generator starts collapsed on the centre mode and only spreads
    # into lines between modes; from sigma 0.5 (latent std sqrt(0.5^2 + sigma_data^2)) it
    # starts as a blurred grid. Modes have std 0.05 and spacing 1: the updates' noise levels
    # sit a little lower, and the GAN term sharpens the modes.
    c.generator_sigma = 0.5
    c.sigma_p_mean = -1.5
    c.sigma_p_std = 1.4
    c.gan_weight = 0.1
    c.generator_lr = 1e-3
    return c


def variant_quick(c):
    t = c.teacher
    t.net.hidden = 32
    t.net.depth = 1
    t.num_steps = 30
    t.batch_size = 64
    t.log_every = 10
    t.sample_steps = 4
    c = few_steps(c, num_steps=6, every=3, batch_size=32, eval_samples=500)
    c.eval_ed_samples = 1000
    return c


def few_steps(c, *, num_steps, every, batch_size, eval_samples):
    """The distillation part of a `quick` variant: `num_steps` steps of a tiny critic,
    evaluated and checkpointed every `every` steps."""
    c.batch_size = batch_size
    c.num_steps = num_steps
    c.log_every = 2
    c.eval_every = every
    c.checkpoint_every_steps = every
    c.eval_samples = eval_samples
    c.disc_hidden = 16
    c.generator_ema = 0.0  # a few updates: evaluate the raw generator
    return c


def variant_grid25_quick(c):
    return variant_quick(variant_grid25(c))


def get_config(arg=None):
    return configs.build(globals(), arg)
