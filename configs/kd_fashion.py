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

import ml_collections

import configs

LOSSES = ("labels", "kd", "reverse_kl", "js", "tv", "skew_kl", "gkd", "nkd", "bdkd", "sinkd")


def base():
    config = ml_collections.ConfigDict()
    config.experiment = "kd_fashion"
    config.cache_dir = "runs/cache"
    config.teacher_variant = ""
    config.losses = LOSSES
    config.seeds = (0, 1, 2)
    config.temperature = 4.0
    config.distill_weight = 1.0
    config.nkd_temperature = 1.0
    config.nkd_gamma = 1.5
    config.student = ml_collections.ConfigDict()
    config.student.kind = "mlp"
    config.student.channels = (8, 16)
    config.student.hidden = 64
    config.batch_size = 128
    config.learning_rate = 2e-3
    config.weight_decay = 1e-4
    config.warmup_steps = 100
    config.num_steps = 2000
    config.max_train_examples = 0
    config.max_test_examples = 0
    config.eval_batch_size = 1000
    config.ece_bins = 15
    config.log_every = 200
    config.eval_every = 0
    config.checkpoint_every_steps = 1000
    config.checkpoint_every_secs = 600.0
    config.keep_checkpoints = 1
    config.async_checkpoints = False
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
