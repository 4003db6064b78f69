r"""Classifier on Fashion-MNIST (Debian package `dataset-fashion-mnist`), derived from the digits config.

Run (full, about 4.5 minutes on a shared 2-core CPU, test accuracy about 0.91):

    python -m experiments.main --config=configs/classifier_fashion.py --workdir=runs/classifier_fashion

Smoke test (`quick`: 2000 training and 1000 test images, about 10 s on a 2-core CPU):

    python -m experiments.main --config=configs/classifier_fashion.py:quick --workdir=runs/fashion_quick
"""

import configs
from configs import classifier_digits


def base():
    c = classifier_digits.get_config()
    c.dataset = "fashion_mnist"
    c.model.channels = (32, 64)
    c.learning_rate = 2e-3
    c.num_steps = 2000
    c.warmup_steps = 100
    c.eval_every = 500
    c.checkpoint_every_steps = 500
    return c


def variant_quick(c):
    c = classifier_digits.variant_quick(c)
    c.max_train_examples = 2000
    c.max_test_examples = 1000
    return c


def get_config(arg=None):
    return configs.build(globals(), arg)
