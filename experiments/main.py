r"""Runs an experiment from a config file.

    python -m experiments.main --config=configs/NAME.py[:ARG] --workdir=DIR [--config.a.b=VALUE]

``config.experiment`` picks the experiment module from `experiments.EXPERIMENTS`
(classifier, fdistill). Overrides of fields that do not exist in the config are errors (the
config is locked). Running again with the same workdir resumes from the latest checkpoint.

Examples:
    python -m experiments.main --config=configs/classifier_digits.py:quick --workdir=/tmp/digits
    python -m experiments.main --config=configs/classifier_digits.py --workdir=/tmp/digits \
        --config.num_steps=500 --config.seed=1
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from experiments import EXPERIMENTS, get_experiment

_CONFIG = config_flags.DEFINE_config_file(
    "config", None,
    "Config file, `configs/NAME.py[:ARG]` (ARG e.g. `quick`); config.experiment selects the experiment, "
    f"one of: {', '.join(sorted(EXPERIMENTS))}.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics.jsonl, plots, summary.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected positional arguments: {argv[1:]}")
    from fdiv.train.config import check_config  # heavy (jax): not needed for --help

    # Orbax logs every save step at INFO; progress lines are printed by the loop instead.
    logging.set_verbosity(logging.WARNING)
    config = _CONFIG.value
    try:
        if "experiment" not in config:
            raise ValueError(f"the config has no 'experiment' field; set it to one of {sorted(EXPERIMENTS)}.")
        module = get_experiment(config.experiment)
        check_config(config)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    module.train_and_evaluate(config, _WORKDIR.value)
    print(f"done; results in {_WORKDIR.value}", flush=True)


def parse_flags(argv):
    """absl flag parsing, with mistyped config overrides reported in one line instead of a traceback."""
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises AttributeError/KeyError for unknown fields, TypeError for values
        # of the wrong type, ValueError from get_config for unknown variants.
        msg = str(e)
        while len(msg) > 1 and msg[0] == msg[-1] and msg[0] in "'\"":
            msg = msg[1:-1]
        msg = msg.replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
        sys.stderr.write(f"FATAL bad --config or --config.* flag: {type(e).__name__}: {msg}\n"
                         "Overrides must name existing fields of the config (it is locked); see --help.\n")
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
