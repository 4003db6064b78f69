r"""Runs an experiment from a config: the only command-line parser of the project.

    python -m experiments.main --config=configs/NAME.py[:VARIANT] --workdir=DIR [--config.a.b=VALUE]

``config.experiment`` picks the experiment module from `experiments.EXPERIMENTS`. Overrides
of fields that do not exist are errors (the config is locked). Running again with the same
workdir resumes from the latest checkpoint (``--config.resume=restart`` starts again).

A user error (a config that does not exist, a bad field value, an unwritable workdir) prints
one line and exits with status 2 before any training work; Ctrl-C saves a checkpoint and
exits with one line (status 130). ``FDIV_TRACEBACK=1`` shows the full traceback instead.

Examples:
    python -m experiments.main --config=configs/fdistill_toy2d.py --workdir=runs/fdistill_toy2d
    python -m experiments.main --config=configs/classifier_digits.py:quick --workdir=runs/digits \
        --config.num_steps=500 --config.seed=1
    python -m experiments.main --config=configs/fdistill_toy2d.py --workdir=runs/alpha05 \
        --config.divergence=alpha --config.divergence_kw.alpha=0.5
"""

from __future__ import annotations

import os
import sys

USAGE = (
    "usage: python -m experiments.main --config=configs/NAME.py[:VARIANT] --workdir=DIR "
    "[--config.FIELD=VALUE ...]"
)


def _traceback_wanted() -> bool:
    return os.environ.get("FDIV_TRACEBACK", "") not in ("", "0")


def _fail(message: str, status: int = 2) -> None:
    message = " ".join(str(message).split())
    sys.stderr.write(f"error: {message}\n")
    sys.exit(status)


def _help_text() -> str:
    import configs
    from experiments import EXPERIMENTS

    return "\n".join(
        [
            USAGE,
            "",
            "Runs config.experiment (" + ", ".join(sorted(EXPERIMENTS)) + ") in --workdir; a rerun "
            "resumes (--config.resume=restart starts again).",
            "",
            "configs (:VARIANT optional):",
            configs.describe(),
            "",
            "flags:",
            "  --config=configs/NAME.py[:VARIANT]  the config and its variant",
            "  --workdir=DIR                        run directory (checkpoints, metrics, plots, "
            "summary.json)",
            "  --config.FIELD=VALUE                 override a field (nested: --config.teacher."
            "num_steps=100)",
            "environment: FDIV_TRACEBACK=1 shows tracebacks of errors.",
        ]
    )


def _check_config_flag(argv: list[str]) -> None:
    """A missing config file is one line listing the configs that exist."""
    import configs

    values = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
    if not values:
        _fail(
            f"--config is required, e.g. --config=configs/fdistill_toy2d.py; configs: "
            f"{', '.join(configs.names())}"
        )
    path = values[-1].split(":", 1)[0]
    if not os.path.exists(path):
        name = os.path.splitext(os.path.basename(path))[0]
        import difflib

        near = difflib.get_close_matches(name, configs.names(), n=1)
        hint = f"did you mean configs/{near[0]}.py? " if near else ""
        _fail(
            f"--config={values[-1]}: no file {path}; {hint}configs: "
            + ", ".join(f"configs/{n}.py" for n in configs.names())
        )
    if not any(a.startswith("--workdir=") for a in argv):
        _fail("--workdir=DIR is required (the run directory)")


def _parse(argv: list[str]):
    from absl import flags
    from ml_collections import config_flags

    config_flag = config_flags.DEFINE_config_file(
        "config", None, "Config file, configs/NAME.py[:VARIANT].", lock_config=True
    )
    workdir_flag = flags.DEFINE_string("workdir", None, "Run directory.")
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as e:
        _fail(f"bad flag: {e}")
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        # ml_collections raises AttributeError/KeyError for unknown fields, TypeError for
        # values of the wrong type, ValueError from get_config for unknown variants.
        if _traceback_wanted():
            raise
        msg = str(e)
        while len(msg) > 1 and msg[0] == msg[-1] and msg[0] in "'\"":
            msg = msg[1:-1]
        msg = msg.replace("\\n", " ").replace("\\'", "'")
        _fail(
            f"bad --config or --config.* flag: {type(e).__name__}: {msg} (overrides must "
            f"name existing fields of the config; see --help)"
        )
    if len(rest) > 1:
        _fail(f"unexpected positional arguments: {rest[1:]}")
    return config_flag.value, workdir_flag.value


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if any(a in ("-h", "--help", "--helpshort", "--helpfull") for a in argv[1:]):
        print(_help_text())
        return 0
    _check_config_flag(argv[1:])
    config, workdir = _parse(argv)

    from absl import logging

    # Orbax logs every save step at INFO; progress lines are printed by the loop instead.
    logging.set_verbosity(logging.WARNING)
    from experiments import get_experiment

    try:
        if "experiment" not in config:
            raise ValueError("the config has no 'experiment' field")
        module = get_experiment(config.experiment)
        module.train_and_evaluate(config, workdir)
    except KeyboardInterrupt as e:
        if _traceback_wanted():
            raise
        step = getattr(e, "step", None)
        where = f" at step {step}" if step is not None else ""
        sys.stderr.write(
            f"interrupted{where}: checkpoint saved in {workdir}; rerun the same command to resume\n"
        )
        return 130
    except ValueError as e:
        if _traceback_wanted():
            raise
        _fail(str(e))
    print(f"done; results in {workdir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
