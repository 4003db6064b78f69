r"""f-distill on Fashion-MNIST (28x28): EDM U-Net teacher, one-step student. GPU sized.

Run on an accelerator (teacher trained once into the cache, reused by every divergence):

    python -m experiments.main --config=configs/fdistill_fashion.py --workdir=/tmp/fdiv/fashion_js \
        --config.divergence=js

Metrics: Frechet distance in the Fashion-MNIST classifier's features (`experiments.classifier`)
and k-NN precision / recall, teacher (35-evaluation Heun) vs generator at init vs one-step
student. The full setting is sized for one GPU (teacher 30k steps at batch 256, then 20k
distillation steps); neither it nor the ``cpu`` variant (small U-Net, short schedules) has
been run or timed yet: no accelerator was available. ``quick``: a tiny CPU smoke variant
(seconds of compute, for tests).
"""

import ml_collections

VARIANTS = (None, "quick", "cpu")


def get_config(arg=None):
    """Base (GPU) config; see VARIANTS."""
    if arg not in VARIANTS:
        raise ValueError(f"configs/fdistill_fashion.py: unknown variant {arg!r}; use one of {VARIANTS}.")
    c = ml_collections.ConfigDict()
    c.experiment = "fdistill"
    c.data = "fashion_mnist"
    c.seed = 0
    c.cache_dir = ""

    t = c.teacher = ml_collections.ConfigDict()
    t.net = ml_collections.ConfigDict()
    t.net.kind = "unet"
    t.net.base = 64
    t.net.channel_mult = (1, 2, 2)
    t.net.num_res = 2
    t.net.emb_dim = 128
    t.seed = 0
    t.num_steps = 30000
    t.batch_size = 256
    t.learning_rate = 1e-3
    t.warmup_steps = 1000
    t.ema_decay = 0.999
    t.p_mean = -1.2
    t.p_std = 1.2
    t.sigma_data = 0.0
    t.sigma_min = 0.002
    t.sigma_max = 80.0
    t.rho = 7.0
    t.sample_steps = 18
    t.log_every = 1000
    t.checkpoint_every_steps = 5000

    c.divergence = "reverse_kl"
    c.batch_size = 256
    c.generator_every = 5
    c.gan_weight = 3e-3
    c.generator_lr = 1e-4
    c.fake_lr = 2e-4
    c.disc_lr = 2e-4
    c.adam_b1 = 0.0
    c.adam_b2 = 0.999
    c.lr_schedule = "cosine"
    c.final_lr_fraction = 0.1
    c.generator_ema = 0.999
    c.disc_features = "fake"
    c.disc_hidden = 256
    c.disc_loss_weight = 1.0
    c.sigma_p_mean = -1.2
    c.sigma_p_std = 1.2
    c.dmd_normalize = True
    c.logit_clip = 10.0
    c.ratio_clip_min = 0.1
    c.ratio_clip_max = 20.0
    c.normalize_weights = True
    c.eval_samples = 5000
    c.eval_seed = 1234
    c.quick_classifier = False

    c.num_steps = 20000
    c.log_every = 200
    c.eval_every = 2000
    c.checkpoint_every_steps = 2000
    c.checkpoint_every_secs = 600.0
    c.keep_checkpoints = 2
    c.async_checkpoints = True

    if arg == "cpu":
        t.net.base = 16
        t.net.num_res = 1
        t.net.emb_dim = 64
        t.num_steps = 3000
        t.batch_size = 64
        c.batch_size = 64
        c.generator_every = 3
        c.num_steps = 1500
        c.eval_every = 500
        c.eval_samples = 1000
        c.generator_ema = 0.0
        c.generator_lr = 2e-4
        c.fake_lr = 5e-4
        c.disc_lr = 5e-4
        c.disc_hidden = 128
    if arg == "quick":
        t.net.base = 8
        t.net.channel_mult = (1,)
        t.net.num_res = 1
        t.net.emb_dim = 16
        t.num_steps = 6
        t.batch_size = 16
        t.log_every = 3
        t.sample_steps = 2
        t.checkpoint_every_steps = 0
        t.ema_decay = 0.0
        c.batch_size = 16
        c.generator_every = 2
        c.num_steps = 4
        c.log_every = 2
        c.eval_every = 2
        c.checkpoint_every_steps = 2
        c.eval_samples = 64
        c.disc_hidden = 16
        c.generator_ema = 0.0
        c.quick_classifier = True
    return c
