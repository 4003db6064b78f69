r"""Knowledge distillation on Fashion-MNIST: a cached CNN teacher, one MLP student per loss.

The base config is the typed defaults of `experiments.settings.KDFashionConfig`: the CNN
teacher of ``configs/classifier_fashion.py`` (trained once into ``runs/cache``), then for each
of the 10 losses and 3 seeds an MLP student (hidden 64) trained 2000 steps of batch 128
(about 4.3 epochs) on cross-entropy + distillation term, temperature 4. Run::

    python -m experiments.main --config=configs/kd_fashion.py --workdir=runs/kd_fashion

Measured on the shared 2-core CPU (AMD EPYC, under the heavy-run lock, fresh teacher cache):
4 min 37 s end to end (teacher 108 s, 2000 steps; 30 students about 5 s each: ~2.5 min); a
second run with the teacher cached skips its 108 s. Students 0.873-0.877 test accuracy against
the teacher's 0.911; the seed sd of a student's accuracy is about 0.002.

Variant ``quick`` (the quick teacher, 2000 training and 1000 test images, 3 losses, one seed,
20 steps; about a minute on the loaded CPU, mostly start-up and the quick teacher)::

    python -m experiments.main --config=configs/kd_fashion.py:quick --workdir=/tmp/kd_fashion_q
"""

import configs
from experiments import settings


def base():
    return settings.to_config_dict(settings.KDFashionConfig())


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
