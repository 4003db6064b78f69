r"""Classifier on scikit-learn's 8x8 digits (also the feature extractor for digit Frechet distances).

The base config is the classifier experiment's typed defaults
(`experiments.settings.ClassifierConfig`). Run (full, about 15 s on a 2-core CPU, test accuracy
about 0.99):

    python -m experiments.main --config=configs/classifier_digits.py --workdir=runs/classifier_digits

Smoke test (`quick`, a few seconds on a 2-core CPU):

    python -m experiments.main --config=configs/classifier_digits.py:quick --workdir=runs/digits_quick
"""

import configs
from experiments import settings


def base():
    return settings.to_config_dict(settings.ClassifierConfig())


def variant_quick(c):
    c.num_steps = 20
    c.log_every = 10
    c.eval_every = 10
    c.checkpoint_every_steps = 10
    c.warmup_steps = 5
    return c


def get_config(arg=None):
    return configs.build(globals(), arg)
