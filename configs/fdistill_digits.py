r"""f-distill on scikit-learn's 8x8 digits: small EDM U-Net teacher, one-step student.

Run (the teacher is trained once into the cache and reused by every divergence / seed):

    python -m experiments.main --config=configs/fdistill_digits.py --workdir=/tmp/fdiv/digits_js \
        --config.divergence=js

Quality is measured by the Frechet distance in the features of the digits classifier
(`experiments.classifier`, trained and cached on first use) and k-NN precision / recall,
for the teacher's 35-evaluation Heun sampler, the generator at initialisation and the
one-step student. Measured on the 2-core CPU: teacher 3.5-12 minutes depending on load
(first run only, 4000 steps), distillation about 15-20 minutes (6000 steps at 5-8 steps/s).
The GAN weight (0.03), the generator EMA and the 6000 steps are what brought the forward-KL
student from a Frechet distance of 2.54 (3000 steps, GAN weight 0.003) to 2.12; see the
README. ``quick``: a few steps (tests).
"""

import ml_collections

VARIANTS = (None, "quick")


def get_config(arg=None):
    """Base config; ``arg="quick"`` gives a seconds-long smoke variant."""
    if arg not in VARIANTS:
        raise ValueError(f"configs/fdistill_digits.py: unknown variant {arg!r}; use one of {VARIANTS}.")
    c = ml_collections.ConfigDict()
    c.experiment = "fdistill"
    c.data = "digits"
    c.seed = 0
    c.cache_dir = ""

    t = c.teacher = ml_collections.ConfigDict()
    t.net = ml_collections.ConfigDict()
    t.net.kind = "unet"
    t.net.base = 32
    t.net.channel_mult = (1, 2)
    t.net.num_res = 1
    t.net.emb_dim = 64
    t.seed = 0
    t.num_steps = 4000
    t.batch_size = 128
    t.learning_rate = 2e-3
    t.warmup_steps = 200
    t.ema_decay = 0.999
    t.p_mean = -1.2
    t.p_std = 1.2
    t.sigma_data = 0.0  # measured (about 0.75 for these images)
    t.sigma_min = 0.002
    t.sigma_max = 80.0
    t.rho = 7.0
    t.sample_steps = 18
    t.log_every = 500
    t.checkpoint_every_steps = 1000

    c.divergence = "reverse_kl"
    c.batch_size = 128
    c.generator_every = 3
    c.gan_weight = 0.03
    c.generator_lr = 2e-4
    c.fake_lr = 5e-4
    c.disc_lr = 5e-4
    c.adam_b1 = 0.0
    c.adam_b2 = 0.999
    c.lr_schedule = "cosine"
    c.final_lr_fraction = 0.1
    c.generator_ema = 0.995  # evaluated generator: EMA over ~200 of its 2000 updates
    c.disc_features = "fake"
    c.disc_hidden = 128
    c.disc_loss_weight = 1.0
    c.sigma_p_mean = -1.2
    c.sigma_p_std = 1.2
    c.dmd_normalize = True
    c.logit_clip = 10.0
    c.ratio_clip_min = 0.1
    c.ratio_clip_max = 20.0
    c.normalize_weights = True
    c.eval_samples = 1000
    c.eval_seed = 1234
    c.quick_classifier = False

    c.num_steps = 6000  # loop steps = critic updates; 2000 generator updates
    c.log_every = 100
    c.eval_every = 1000
    c.checkpoint_every_steps = 1000
    c.checkpoint_every_secs = 600.0
    c.keep_checkpoints = 2
    c.async_checkpoints = True

    if arg == "quick":
        t.net.base = 8
        t.net.channel_mult = (1,)
        t.net.emb_dim = 16
        t.num_steps = 10
        t.batch_size = 32
        t.log_every = 5
        t.sample_steps = 3
        c.batch_size = 16
        c.generator_every = 2
        c.num_steps = 4
        c.log_every = 2
        c.eval_every = 2
        c.checkpoint_every_steps = 2
        c.eval_samples = 64
        c.disc_hidden = 16
        c.quick_classifier = True
        c.generator_ema = 0.0  # a few updates: evaluate the raw generator
    return c
