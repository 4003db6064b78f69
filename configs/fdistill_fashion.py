r"""f-distill on Fashion-MNIST (28x28): EDM U-Net teacher, one-step student. GPU sized.

Derived from ``configs/fdistill_digits.py``. Run on an accelerator (teacher and feature
classifier trained once into the cache, reused by every divergence):

    python -m experiments.main --config=configs/fdistill_fashion.py --workdir=runs/fashion_js

Metrics: Frechet distance in the Fashion-MNIST classifier's features (``config.classifier``)
and k-NN precision / recall, teacher (35-evaluation Heun) vs generator at init vs one-step
student. The full setting is sized for one GPU (teacher 30k steps at batch 256, then 20k
distillation steps) and has not been run (no accelerator was available). The ``cpu``
variant (small U-Net, short schedules) took 12 min for the teacher and the feature classifier
and 14.5 min for 1500 distillation steps on the shared 2-core CPU: teacher FD 32.1, forward-KL
student 61.5, generator at init 288 (README). ``quick``: a tiny CPU smoke variant (seconds of
compute, for tests).
"""

import configs
from configs import classifier_fashion, fdistill_digits


def base():
    c = fdistill_digits.get_config()
    c.data = "fashion_mnist"
    c.classifier = classifier_fashion.get_config()
    # 28x28 images: a wider U-Net and longer schedules than the digits setting.
    t = c.teacher
    t.net.base = 64
    t.net.channel_mult = (1, 2, 2)
    t.net.num_res = 2
    t.net.emb_dim = 128
    t.num_steps = 30000
    t.batch_size = 256
    t.learning_rate = 1e-3
    t.warmup_steps = 1000
    t.log_every = 1000
    t.checkpoint_every_steps = 5000
    c.batch_size = 256
    c.generator_every = 5
    c.generator_lr = 1e-4
    c.fake_lr = 2e-4
    c.disc_lr = 2e-4
    c.generator_ema = 0.999
    c.disc_hidden = 256
    c.eval_samples = 5000
    c.num_steps = 20000
    c.log_every = 200
    c.eval_every = 2000
    c.checkpoint_every_steps = 2000
    return c


def variant_cpu(c):
    t = c.teacher
    t.net.base = 16
    t.net.num_res = 1
    t.net.emb_dim = 64
    t.num_steps = 3000
    t.batch_size = 64
    c.batch_size = 64
    c.num_steps = 1500
    c.eval_every = 500
    c.eval_samples = 1000
    c.generator_ema = 0.0
    # The digits setting's generator and critic (its rates suit the small U-Net and batch).
    digits = fdistill_digits.get_config()
    for field in ("generator_every", "generator_lr", "fake_lr", "disc_lr", "disc_hidden"):
        c[field] = digits[field]
    return c


def variant_quick(c):
    # The digits smoke setting on Fashion-MNIST: tiny networks, a few steps.
    c = fdistill_digits.get_config("quick")
    c.data = "fashion_mnist"
    c.classifier = classifier_fashion.get_config("quick")
    t = c.teacher
    t.num_steps = 6
    t.batch_size = 16
    t.log_every = 3
    t.sample_steps = 2
    t.checkpoint_every_steps = 0
    t.ema_decay = 0.0
    return c


def get_config(arg=None):
    return configs.build(globals(), arg)
