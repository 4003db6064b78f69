r"""Knowledge distillation on Fashion-MNIST: a cached CNN teacher, one MLP student per loss.

Run (full: 10 losses x 3 seeds x 2000 steps; not yet run on the 2-core CPU)::

    python -m experiments.main \
        --config=configs/kd_fashion.py --workdir=runs/kd_fashion

Smoke test (``quick``: the quick teacher, 2000 training and 1000 test images, 3 losses, one
seed, 20 steps; seconds)::

    python -m experiments.main --config=configs/kd_fashion.py:quick --workdir=/tmp/kd_fashion_q

The full run's runtime on a 2-core CPU has not been measured yet; the quick variant takes
seconds plus the quick teacher's training.
"""

import configs
from experiments import settings


def base():
    return settings.to_config_dict(settings.KDFashionConfig())


def variant_long(config):
    config.num_steps = 8000
    config.warmup_steps = 400
    config.log_every = 1000
    config.checkpoint_every_steps = 4000
    return config


def variant_quick(config):
    config.teacher_variant = "quick"
    config.losses = ("labels", "kd", "nkd")
    config.seeds = (0,)
    config.num_steps = 20
    config.warmup_steps = 5
    config.max_train_examples = 2000
    config.max_test_examples = 1000
    config.log_every = 10
    config.checkpoint_every_steps = 10
    return config


def get_config(arg=None):
    return configs.build(globals(), arg)
