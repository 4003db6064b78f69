r"""Classifier on Fashion-MNIST (Debian package `dataset-fashion-mnist`), derived from the digits config.

Run (full, about 4.5 minutes on a shared 2-core CPU, test accuracy about 0.91):

    python -m experiments.main --config=configs/classifier_fashion.py --workdir=/tmp/fdiv/classifier_fashion

Smoke test (`quick`: 2000 training and 1000 test images, about 10 s on a 2-core CPU):

    python -m experiments.main --config=configs/classifier_fashion.py:quick --workdir=/tmp/fdiv/fashion_quick
"""

import importlib.util
import os

VARIANTS = (None, "quick")


def _digits_config(arg):
    # Config files are loaded by path (not as a package), so the base is loaded the same way.
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "classifier_digits.py")
    spec = importlib.util.spec_from_file_location("_classifier_digits_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def get_config(arg=None):
    """Fashion-MNIST variant of the digits config; ``arg="quick"`` gives a smoke variant."""
    if arg not in VARIANTS:
        raise ValueError(f"configs/classifier_fashion.py: unknown variant {arg!r}; use one of {VARIANTS}.")
    config = _digits_config(arg)
    config.dataset = "fashion_mnist"
    config.model.channels = (32, 64)
    config.learning_rate = 2e-3
    config.num_steps = 2000
    config.warmup_steps = 100
    config.eval_every = 500
    config.checkpoint_every_steps = 500
    config.log_every = 100
    if arg == "quick":
        config.max_train_examples = 2000
        config.max_test_examples = 1000
        config.num_steps = 20
        config.warmup_steps = 5
        config.eval_every = 10
        config.checkpoint_every_steps = 10
        config.log_every = 10
    return config
