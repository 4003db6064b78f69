"""Experiments: one module per experiment, each with ``train_and_evaluate(config, workdir)``.

`EXPERIMENTS` maps ``config.experiment`` to a module path; it is a literal dict (no
registration side effects), so a name resolves the same way in a script, a test or a
notebook. `get_experiment(name)` imports the module; `run(config, workdir)` validates the
config and calls its ``train_and_evaluate``. `load_config(name, arg)` loads
``configs/<name>.py`` of this repository and calls its ``get_config(arg)`` (for notebooks and
tests; the command line goes through ``experiments.main``).

Notebook use::

    import experiments
    config = experiments.load_config("classifier_digits", "quick")
    summary = experiments.run(config, "/tmp/digits")
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

EXPERIMENTS = {
    "classifier": "experiments.classifier",
    "fdistill": "experiments.fdistill",
    "estimators": "experiments.estimators",
    "kd_lm": "experiments.kd_lm",
    "kd_fashion": "experiments.kd_fashion",
    "fdpg": "experiments.fdpg",
}

CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def get_experiment(name: str):
    """The experiment module registered as `name`.

    Raises:
      ValueError: for an unregistered name (the message lists the registered ones), or a
        registered name whose module does not exist (yet).
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; registered experiments: {sorted(EXPERIMENTS)} "
                         "(add new ones to EXPERIMENTS in experiments/__init__.py).")
    module_path = EXPERIMENTS[name]
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        # Only a missing experiment module itself is reported this way; a missing dependency
        # inside it keeps its own error.
        if e.name in (module_path, module_path.rsplit(".", 1)[0]):
            raise ValueError(f"experiment {name!r} is registered as module {module_path!r}, but that module "
                             f"does not exist (expected {module_path.replace('.', '/')}.py).") from e
        raise
    if not hasattr(module, "train_and_evaluate"):
        raise ValueError(f"experiment module {module_path!r} has no train_and_evaluate(config, workdir).")
    return module


def run(config: Any, workdir: str) -> dict:
    """Validates `config` (no NaN) and runs ``get_experiment(config.experiment).train_and_evaluate``."""
    from fdiv.train.config import check_config

    if "experiment" not in config:
        raise ValueError(f"config has no 'experiment' field; set config.experiment to one of {sorted(EXPERIMENTS)}.")
    check_config(config)
    return get_experiment(config.experiment).train_and_evaluate(config, workdir)


def config_names() -> list[str]:
    """Names of the config files ``configs/*.py`` (without the extension)."""
    if not os.path.isdir(CONFIGS_DIR):
        return []
    return sorted(f[:-3] for f in os.listdir(CONFIGS_DIR) if f.endswith(".py") and not f.startswith("_"))


def load_config(name: str, arg: str | None = None):
    """``configs/<name>.py``'s ``get_config(arg)``; `name` may also be a path to a config file.

    Raises:
      ValueError: when the file does not exist (the message lists the available configs).
    """
    path = name if name.endswith(".py") else os.path.join(CONFIGS_DIR, f"{name}.py")
    if not os.path.exists(path):
        raise ValueError(f"no config file {path}; available configs: {config_names()}.")
    module_name = "_fdiv_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)
