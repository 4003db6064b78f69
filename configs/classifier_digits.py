r"""Classifier on scikit-learn's 8x8 digits (also the feature extractor for digit Frechet distances).

Run (full, about 15 s on a 2-core CPU, test accuracy about 0.99):

    python -m experiments.main --config=configs/classifier_digits.py --workdir=/tmp/fdiv/classifier_digits

Smoke test (`quick`, a few seconds on a 2-core CPU):

    python -m experiments.main --config=configs/classifier_digits.py:quick --workdir=/tmp/fdiv/digits_quick
"""

import ml_collections

VARIANTS = (None, "quick")


def get_config(arg=None):
    """Base config; ``arg="quick"`` gives a few-step smoke variant."""
    if arg not in VARIANTS:
        raise ValueError(f"configs/classifier_digits.py: unknown variant {arg!r}; use one of {VARIANTS}.")
    config = ml_collections.ConfigDict()
    config.experiment = "classifier"
    config.dataset = "digits"
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.kind = "cnn"
    config.model.channels = (16, 32)
    config.model.hidden = 128

    config.batch_size = 128
    config.learning_rate = 3e-3
    config.weight_decay = 1e-4
    config.warmup_steps = 50
    config.max_train_examples = 0  # 0: all 1438 training images
    config.max_test_examples = 0
    config.eval_batch_size = 256

    config.num_steps = 600
    config.log_every = 100
    config.eval_every = 200
    config.checkpoint_every_steps = 200
    config.checkpoint_every_secs = 600.0
    config.keep_checkpoints = 2
    config.async_checkpoints = True

    if arg == "quick":
        config.num_steps = 20
        config.log_every = 10
        config.eval_every = 10
        config.checkpoint_every_steps = 10
        config.warmup_steps = 5
    return config
