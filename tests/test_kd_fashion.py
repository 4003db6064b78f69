"""experiments.kd_fashion: the calibration metric and the quick run."""

import os

import numpy as np
import pytest

import experiments
from experiments import kd_fashion
from fdiv import data as data_lib
from fdiv.train.config import ConfigError


def test_expected_calibration_error_by_hand():
    # Confidence 0.8 everywhere, half right: one bin with |0.5 - 0.8| = 0.3.
    probs = np.tile([0.8, 0.1, 0.1], (10, 1))
    labels = np.array([0] * 5 + [1] * 5)
    assert kd_fashion.expected_calibration_error(probs, labels) == pytest.approx(0.3)
    # Two bins, each perfectly calibrated in its own way: 0.6 confident and 60% right, 1.0 and
    # all right.
    probs = np.array([[0.6, 0.4]] * 5 + [[1.0, 0.0]] * 5)
    labels = np.array([0, 0, 0, 1, 1] + [0] * 5)
    assert kd_fashion.expected_calibration_error(probs, labels) == pytest.approx(0.0, abs=1e-12)


def test_quick_run_writes_table_and_figure(tmp_path):
    try:
        data_lib.load_fashion_mnist()
    except (FileNotFoundError, ValueError, OSError) as e:
        pytest.skip(f"Fashion-MNIST not installed: {e}")
    config = experiments.load_config("kd_fashion", "quick")
    config.cache_dir = str(tmp_path / "cache")
    summary = experiments.run(config, str(tmp_path / "run"))
    assert set(summary["runs"]) == {"labels/0", "kd/0", "nkd/0"}
    for metrics in summary["runs"].values():
        assert 0.1 < metrics["accuracy"] <= 1 and 0 <= metrics["ece"] <= 1
    table = (tmp_path / "run" / "results.md").read_text()
    assert "| teacher (CNN) |" in table and "| nkd |" in table
    assert os.path.getsize(tmp_path / "run" / "results.png") > 0


def test_config_is_validated_before_any_work(tmp_path):
    config = experiments.load_config("kd_fashion", "quick")
    config.losses = ("kd", "kl_div")
    config.seeds = ()
    config.temperature = 0.0
    config.student.kind = "resnet"
    config.batch_size = 0
    config.num_steps = 0
    with pytest.raises(ConfigError) as e:
        kd_fashion.train_and_evaluate(config, str(tmp_path / "run"))
    fields = sorted(m.split("=")[0] for m in e.value.problems)
    assert fields == [
        "config.batch_size",
        "config.losses",
        "config.num_steps",
        "config.seeds",
        "config.student.kind",
        "config.temperature",
    ], e.value.problems
    assert "unknown: 'kl_div'" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run" / "labels").exists()  # nothing trained
    config = experiments.load_config("kd_fashion", "quick")
    config.student.hiden = 3
    with pytest.raises(ConfigError, match=r"config.student.hiden is not a field \(did you mean"):
        kd_fashion.train_and_evaluate(config, str(tmp_path / "run"))
