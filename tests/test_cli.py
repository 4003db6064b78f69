"""Command line: python -m experiments.main (help, overrides, locked config, unknown experiment)."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "--config=configs/classifier_digits.py:quick"


def _main(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "experiments.main", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_help_lists_experiments():
    out = _main("--help")
    # absl's --help prints the usage and exits with status 1 by design.
    assert out.returncode in (0, 1) and "Traceback" not in out.stderr, out.stderr
    text = out.stdout + out.stderr
    assert "--workdir" in text and "--config" in text
    assert "classifier" in text and "fdistill" in text


def test_override_is_applied(tmp_path):
    wd = str(tmp_path / "run")
    out = _main(DIGITS, f"--workdir={wd}", "--config.num_steps=3", "--config.log_every=1",
                "--config.model.hidden=16")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 3/3" in out.stdout and "steps/s" in out.stdout and "ETA" in out.stdout
    with open(os.path.join(wd, "summary.json")) as f:
        summary = json.load(f)
    assert summary["config"]["num_steps"] == 3 and summary["config"]["model"]["hidden"] == 16
    assert summary["num_params"] == 16 * (2 * 2 * 32) + 16 + 16 * 10 + 10 + (9 * 1 * 16 + 16) + (9 * 16 * 32 + 32)


def test_mistyped_field_is_an_error(tmp_path):
    out = _main(DIGITS, f"--workdir={tmp_path}", "--config.num_stepz=3")
    assert out.returncode != 0
    assert "num_stepz" in out.stderr and 'Did you mean "num_steps"' in out.stderr
    assert "Traceback" not in out.stderr
    assert not os.path.exists(os.path.join(str(tmp_path), "summary.json"))


def test_unknown_experiment_and_nan_are_errors(tmp_path):
    out = _main(DIGITS, f"--workdir={tmp_path}", "--config.experiment=nope")
    assert out.returncode != 0
    assert "unknown experiment 'nope'" in out.stderr and "classifier" in out.stderr
    out = _main(DIGITS, f"--workdir={tmp_path}", "--config.learning_rate=nan")
    assert out.returncode != 0
    assert "config.learning_rate" in out.stderr and "NaN" in out.stderr
