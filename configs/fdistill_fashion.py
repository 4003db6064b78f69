r"""f-distill on Fashion-MNIST (28x28): EDM U-Net teacher, one-step student. GPU sized.

Run on an accelerator (teacher trained once into the cache, reused by every divergence):

    python -m experiments.main --config=configs/fdistill_fashion.py --workdir=/tmp/fdiv/fashion_js \
        --config.divergence=js

Metrics: Frechet distance in the Fashion-MNIST classifier's features (`experiments.classifier`)
and k-NN precision / recall, teacher (35-evaluation Heun) vs generator at init vs one-step
student. The full setting is sized for one GPU (teacher 30k steps at batch 256, then 20k
distillation steps) and has not been run (no accelerator was available). The ``cpu``
variant (small U-Net, short schedules) took 12 min for the teacher and the feature classifier
and 14.5 min for 1500 distillation steps on the shared 2-core CPU: teacher FD 32.1, forward-KL
student 61.5, generator at init 288 (README). ``quick``: a tiny CPU smoke variant (seconds of
compute, for tests).
"""

import importlib.util
import os

VARIANTS = (None, "quick", "cpu")


def _digits_config(arg=None):
    """``configs/fdistill_digits.py``'s config: the base this file derives from."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fdistill_digits.py")
    spec = importlib.util.spec_from_file_location("_fdiv_config_fdistill_digits", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg=None):
    """Base (GPU) config; see VARIANTS. Derived from the digits config."""
    if arg not in VARIANTS:
        raise ValueError(f"configs/fdistill_fashion.py: unknown variant {arg!r}; use one of {VARIANTS}.")
    c = _digits_config("quick" if arg == "quick" else None)
    c.data = "fashion_mnist"
    t = c.teacher
    if arg == "quick":
        t.net.num_res = 1
        t.num_steps = 6
        t.batch_size = 16
        t.log_every = 3
        t.sample_steps = 2
        t.checkpoint_every_steps = 0
        t.ema_decay = 0.0
        return c

    # 28x28 images: a wider U-Net and longer schedules than the digits setting.
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
    return c
