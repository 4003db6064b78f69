r"""f-distill on scikit-learn's 8x8 digits: small EDM U-Net teacher, one-step student.

Derived from the f-distill base (``configs/fdistill_toy2d.py``). Run (the teacher and the
feature classifier are trained once into the cache and reused by every divergence / seed):

    python -m experiments.main --config=configs/fdistill_digits.py --workdir=runs/digits_js

Quality is measured by the Frechet distance in the features of the digits classifier
(``config.classifier``: `experiments.classifier`, trained and cached on first use) and k-NN
precision / recall, for the teacher's 35-evaluation Heun sampler, the generator at
initialisation and the one-step student. Measured on the 2-core CPU: teacher 3.5-12 minutes
depending on load (first run only, 4000 steps), distillation about 15-20 minutes (6000 steps
at 5-8 steps/s). The GAN weight (0.03), the generator EMA and the 6000 steps are what brought
the forward-KL student from a Frechet distance of 2.54 (3000 steps, GAN weight 0.003) to 2.12;
see the README. ``quick``: a few steps (tests).
"""

import configs
from configs import classifier_digits, fdistill_toy2d


def base():
    c = fdistill_toy2d.get_config()
    c.data = "digits"
    c.classifier = classifier_digits.get_config()
    t = c.teacher
    t.net.kind = "unet"
    t.net.base = 32
    t.net.channel_mult = (1, 2)
    t.net.num_res = 1
    t.net.emb_dim = 64
    t.batch_size = 128
    t.warmup_steps = 200
    t.ema_decay = 0.999
    t.p_mean = -1.2
    t.p_std = 1.2
    t.sigma_max = 80.0
    t.log_every = 500
    t.checkpoint_every_steps = 1000

    c.batch_size = 128
    c.generator_every = 3
    c.gan_weight = 0.03
    c.generator_lr = 2e-4
    c.fake_lr = 5e-4
    c.disc_lr = 5e-4
    c.generator_ema = 0.995  # evaluated generator: EMA over ~200 of its 2000 updates
    # The generator and discriminator updates draw noise levels as the teacher was trained.
    c.sigma_p_mean, c.sigma_p_std = t.p_mean, t.p_std
    c.eval_samples = 1000
    c.eval_ed_samples = 0
    c.log_every = 100
    c.eval_every = 1000
    c.checkpoint_every_steps = 1000  # 6000 loop steps = critic updates; 2000 generator updates
    return c


def variant_quick(c):
    t = c.teacher
    t.net.base = 8
    t.net.channel_mult = (1,)
    t.net.emb_dim = 16
    t.num_steps = 10
    t.batch_size = 32
    t.log_every = 5
    t.sample_steps = 3
    c.classifier = classifier_digits.get_config("quick")
    c.generator_every = 2
    return fdistill_toy2d.few_steps(c, num_steps=4, every=2, batch_size=16, eval_samples=64)


def get_config(arg=None):
    return configs.build(globals(), arg)
