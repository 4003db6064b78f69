r"""f-distill on a 2-D toy target (SPEC section 8): EDM MLP teacher, one-step student.

Run (ring8, reverse KL; teacher is trained once into the cache and reused):

    python -m experiments.main --config=configs/fdistill_toy2d.py --workdir=/tmp/fdiv/toy_rkl
    python -m experiments.main --config=configs/fdistill_toy2d.py --workdir=/tmp/fdiv/toy_js \
        --config.divergence=js

Variants: ``grid25`` (25-mode grid target; the generator starts from noise level 0.5, not
sigma_max, and uses its own noise levels, GAN weight and learning rate: about 3.5 minutes end
to end on the loaded CPU), ``quick`` (a few steps, tiny teacher; seconds), ``grid25_quick``.
Measured on the 2-core CPU (ring8): teacher 23 s (first run only, 4000 steps), distillation
79 s (6000 steps, ~86 steps/s, evaluations included), 104 s end to end with a fresh cache; up
to about 4 minutes when the machine is heavily loaded.
Any divergence with a weight h (``fdiv.divergences.names()`` minus total_variation) can be
chosen with ``--config.divergence=NAME``.
"""

import ml_collections

VARIANTS = (None, "grid25", "quick", "grid25_quick")


def get_config(arg=None):
    """Base config (ring8); see VARIANTS."""
    if arg not in VARIANTS:
        raise ValueError(f"configs/fdistill_toy2d.py: unknown variant {arg!r}; use one of {VARIANTS}.")
    c = ml_collections.ConfigDict()
    c.experiment = "fdistill"
    c.data = "ring8"
    c.seed = 0
    c.cache_dir = ""  # "": $FDIV_CACHE or ~/.cache/fdiv

    t = c.teacher = ml_collections.ConfigDict()
    t.net = ml_collections.ConfigDict()
    t.net.kind = "mlp"
    t.net.hidden = 128
    t.net.depth = 3
    t.net.emb_dim = 32
    t.seed = 0
    t.num_steps = 4000
    t.batch_size = 512
    t.learning_rate = 2e-3
    t.warmup_steps = 100
    t.ema_decay = 0.0
    # Mode std 0.08 and sigma_data ~1.4: noise levels from ~0.02 to ~10 matter.
    t.p_mean = -1.0
    t.p_std = 1.6
    t.sigma_data = 0.0  # measured from the target
    t.sigma_min = 0.002
    t.sigma_max = 20.0
    t.rho = 7.0
    t.sample_steps = 18
    t.log_every = 1000
    t.checkpoint_every_steps = 0

    c.divergence = "reverse_kl"
    c.batch_size = 256
    c.generator_every = 2
    c.gan_weight = 1e-2
    c.generator_lr = 5e-4
    c.fake_lr = 1e-3
    c.disc_lr = 1e-3
    c.adam_b1 = 0.0
    c.adam_b2 = 0.999
    c.lr_schedule = "cosine"
    c.final_lr_fraction = 0.1
    c.generator_ema = 0.99  # evaluated generator: EMA over ~100 generator updates
    c.disc_features = "fake"
    c.disc_hidden = 128
    c.disc_loss_weight = 1.0
    c.sigma_p_mean = -1.0
    c.sigma_p_std = 1.6
    c.dmd_normalize = True
    c.logit_clip = 10.0
    c.ratio_clip_min = 0.1
    c.ratio_clip_max = 20.0
    c.normalize_weights = True
    c.eval_samples = 4000  # SPEC section 8 metrics
    c.eval_ed_samples = 20000  # plus an energy distance with ~10x less sampling noise
    c.eval_seed = 1234
    c.quick_classifier = False

    c.num_steps = 6000  # loop steps = critic updates; 3000 generator updates
    c.log_every = 500
    c.eval_every = 2000
    c.checkpoint_every_steps = 2000
    c.checkpoint_every_secs = 600.0
    c.keep_checkpoints = 2
    c.async_checkpoints = True

    if arg in ("grid25", "grid25_quick"):
        c.data = "grid25"
        # From sigma_max = 20 the generator starts collapsed on the centre mode and only
        # spreads into lines between modes; from sigma 0.5 (latent std sqrt(0.5^2 +
        # sigma_data^2)) it starts as a blurred grid. Modes have std 0.05 and spacing 1: the
        # updates' noise levels sit a little lower, and the GAN term sharpens the modes.
        c.generator_sigma = 0.5
        c.sigma_p_mean = -1.5
        c.sigma_p_std = 1.4
        c.gan_weight = 0.1
        c.generator_lr = 1e-3
    if arg in ("quick", "grid25_quick"):
        t.net.hidden = 32
        t.net.depth = 1
        t.num_steps = 30
        t.batch_size = 64
        t.log_every = 10
        t.sample_steps = 4
        c.batch_size = 32
        c.num_steps = 6
        c.log_every = 2
        c.eval_every = 3
        c.checkpoint_every_steps = 3
        c.eval_samples = 500
        c.eval_ed_samples = 1000
        c.disc_hidden = 16
        c.generator_ema = 0.0  # a few updates: evaluate the raw generator
    return c
