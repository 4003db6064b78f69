r"""The EDM teacher stage on a 2-D toy target, run on its own (f-distill loads it from the cache).

The base config is the stage's typed defaults (`experiments.settings.EDMTeacherConfig`), the
same teacher as ``configs/fdistill_toy2d.py``'s. Run (about 25 s on a 2-core CPU; writes the
teacher's Heun-sampler metrics and a sample plot into the workdir):

    python -m experiments.main --config=configs/edm_teacher_toy2d.py --workdir=runs/teacher_ring8

``quick``: a tiny teacher for tests (seconds).
"""

import configs
from configs import fdistill_toy2d
from experiments import settings


def base():
    return settings.to_config_dict(settings.EDMTeacherConfig())


def variant_quick(c):
    # The teacher of fdistill_toy2d:quick, so both share one cache entry.
    c.teacher = fdistill_toy2d.get_config("quick").teacher
    c.eval_samples = 500
    return c


def get_config(arg=None):
    return configs.build(globals(), arg)
