"""Experiments: one module per experiment, each with ``train_and_evaluate(config, workdir)``.

`EXPERIMENTS` maps ``config.experiment`` to a module path; it is a literal dict (no
registration side effects), so a name resolves the same way in a script, a test or a
notebook. `get_experiment(name)` imports the module; `run(config, workdir)` calls its
``train_and_evaluate``, which validates the whole config (one `ConfigError` listing every bad
field) before any work. `load_config(name, arg)` is ``configs.get_config(name, arg)`` (for
notebooks and tests; the command line goes through ``experiments.main``).

Stages (``edm_teacher``, ``classifier``) are experiments too, with ``load_or_train(config)``
for the experiments that use them; shared pieces live below both (`experiments.settings`:
typed configs; `experiments.cache`: the stage cache; `experiments.problems`: data and
metrics).

Notebook use::

    import experiments
    config = experiments.load_config("classifier_digits", "quick")
    summary = experiments.run(config, "/tmp/digits")
"""

from __future__ import annotations

import importlib
import os
from typing import Any

EXPERIMENTS = {
    "classifier": "experiments.classifier",
    "edm_teacher": "experiments.edm_teacher",
    "fdistill": "experiments.fdistill",
    "estimators": "experiments.estimators",
    "kd_lm": "experiments.kd_lm",
    "kd_fashion": "experiments.kd_fashion",
    "fdpg": "experiments.fdpg",
}


def get_experiment(name: str):
    """The experiment module registered as `name`.

    Raises:
      ValueError: for an unregistered name (the message lists the registered ones), or a
        registered name whose module does not exist (yet).
    """
    if name not in EXPERIMENTS:
        raise ValueError(
            f"unknown experiment {name!r}; registered experiments: {sorted(EXPERIMENTS)} "
            "(add new ones to EXPERIMENTS in experiments/__init__.py)."
        )
    module_path = EXPERIMENTS[name]
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        # Only a missing experiment module itself is reported this way; a missing dependency
        # inside it keeps its own error.
        if e.name in (module_path, module_path.rsplit(".", 1)[0]):
            raise ValueError(
                f"experiment {name!r} is registered as module {module_path!r}, but that module "
                f"does not exist (expected {module_path.replace('.', '/')}.py)."
            ) from e
        raise
    if not hasattr(module, "train_and_evaluate"):
        raise ValueError(
            f"experiment module {module_path!r} has no train_and_evaluate(config, workdir)."
        )
    return module


def run(config: Any, workdir: str) -> dict:
    """Runs ``get_experiment(config.experiment).train_and_evaluate(config, workdir)``.

    Raises:
      ValueError: (a `ConfigError` for bad fields) before any training work.
    """
    if "experiment" not in config:
        raise ValueError(
            f"config has no 'experiment' field; set config.experiment to one of "
            f"{sorted(EXPERIMENTS)}."
        )
    return get_experiment(config.experiment).train_and_evaluate(config, workdir)


def config_names() -> list[str]:
    """Names of the configs (``configs/*.py``)."""
    import configs

    return configs.names()


def load_config(name: str, arg: str | None = None):
    """``configs/<name>.py``'s ``get_config(arg)``; `name` may also be ``configs/<name>.py``.

    Raises:
      ValueError: for a config that does not exist (the message lists those that do) or an
        unknown variant.
    """
    import configs

    if name.endswith(".py"):
        name = os.path.splitext(os.path.basename(name))[0]
    return configs.get_config(name, arg)
