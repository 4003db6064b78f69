"""Command line: python -m experiments.main (help, overrides, one-line user errors, Ctrl-C)."""

import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "--config=configs/classifier_digits.py:quick"


def _env(**extra):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "FDIV_TRACEBACK": "", **extra}


def _main(*args, timeout=300, **env):
    return subprocess.run(
        [sys.executable, "-m", "experiments.main", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(**env),
    )


def _one_line_error(out):
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    lines = [l for l in out.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
    return lines[0]


def test_help_lists_configs_and_variants():
    out = _main("--help")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    text = out.stdout
    assert "--workdir" in text and "--config" in text
    assert "configs/fdistill_toy2d.py[:grid25|grid25_quick|quick]" in text
    assert "configs/classifier_digits.py[:quick]" in text
    assert "fdistill" in text and "classifier" in text and "edm_teacher" in text


def test_override_is_applied(tmp_path):
    wd = str(tmp_path / "run")
    out = _main(
        DIGITS,
        f"--workdir={wd}",
        "--config.num_steps=3",
        "--config.log_every=1",
        "--config.model.hidden=16",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "step 3/3" in out.stdout and "steps/s" in out.stdout and "ETA" in out.stdout
    with open(os.path.join(wd, "summary.json")) as f:
        summary = json.load(f)
    assert summary["config"]["loop"]["num_steps"] == 3
    assert summary["config"]["model"]["hidden"] == 16
    assert summary["num_params"] == (
        16 * (2 * 2 * 32) + 16 + 16 * 10 + 10 + (9 * 1 * 16 + 16) + (9 * 16 * 32 + 32)
    )


def test_mistyped_field_is_an_error(tmp_path):
    line = _one_line_error(_main(DIGITS, f"--workdir={tmp_path}", "--config.num_stepz=3"))
    assert "num_stepz" in line and 'Did you mean "num_steps"' in line
    assert not os.path.exists(os.path.join(str(tmp_path), "summary.json"))


def test_missing_config_file_lists_the_configs(tmp_path):
    line = _one_line_error(_main("--config=configs/fdistill_toy.py", f"--workdir={tmp_path}"))
    assert "no file configs/fdistill_toy.py" in line
    assert "did you mean configs/fdistill_toy2d.py" in line
    assert "configs/classifier_digits.py" in line


def test_bad_values_are_one_line_before_any_work(tmp_path):
    wd = tmp_path / "run"
    line = _one_line_error(
        _main(
            DIGITS,
            f"--workdir={wd}",
            "--config.batch_size=0",
            "--config.num_steps=0",
            "--config.learning_rate=-0.1",
        )
    )
    for field in ("config.batch_size=0", "config.num_steps=0", "config.learning_rate=-0.1"):
        assert field in line, line
    assert not (wd / "checkpoints").exists() and not (wd / "metrics.jsonl").exists()
    line = _one_line_error(
        _main(
            "--config=configs/fdistill_toy2d.py:quick", f"--workdir={wd}", "--config.divergence=kll"
        )
    )
    assert "config.divergence='kll'" in line and "did you mean 'kl'" in line
    line = _one_line_error(
        _main(
            "--config=configs/fdistill_toy2d.py:quick",
            f"--workdir={wd}",
            "--config.divergence=total_variation",
        )
    )
    assert "no f-distill weight" in line
    assert not (wd / "checkpoints").exists()


def test_unwritable_workdir_and_traceback_switch(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = _one_line_error(_main(DIGITS, f"--workdir={blocker}/run"))
    assert "--workdir=" in line and "cannot be created or written" in line
    out = _main(DIGITS, f"--workdir={blocker}/run", FDIV_TRACEBACK="1")
    assert out.returncode != 0 and "Traceback" in out.stderr


def test_unknown_experiment_and_nan_are_errors(tmp_path):
    line = _one_line_error(_main(DIGITS, f"--workdir={tmp_path}", "--config.experiment=nope"))
    assert "unknown experiment 'nope'" in line and "classifier" in line
    line = _one_line_error(_main(DIGITS, f"--workdir={tmp_path}", "--config.learning_rate=nan"))
    assert "config.learning_rate" in line and "NaN" in line


def test_ctrl_c_saves_and_exits_with_one_line(tmp_path):
    wd = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.main",
            DIGITS,
            f"--workdir={wd}",
            "--config.num_steps=100000",
            "--config.log_every=10",
            "--config.checkpoint_every_steps=0",
        ],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # A test runner started in the background by a non-interactive shell ignores SIGINT,
        # and the child would inherit that; Ctrl-C handling is what is tested here.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not (wd / "metrics.jsonl").exists():
            time.sleep(0.5)
        assert (wd / "metrics.jsonl").exists(), "the run did not start"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines[-1].startswith("interrupted") and "rerun the same command" in lines[-1]
    assert os.listdir(wd / "checkpoints"), "a checkpoint is saved on Ctrl-C"
