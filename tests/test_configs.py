"""Every config file's `quick` variant runs end to end; classifier feature-extractor cache."""

import glob
import json
import math
import os

import numpy as np
import pytest

import experiments
from fdiv.train import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = sorted(os.path.splitext(os.path.basename(p))[0]
                      for p in glob.glob(os.path.join(REPO, "configs", "*.py"))
                      if not os.path.basename(p).startswith("_"))


@pytest.fixture(scope="module", autouse=True)
def _private_cache(tmp_path_factory):
    """Experiments that cache trained models (teachers, classifiers) use a fresh directory,
    so results never depend on what an earlier run left in ~/.cache/fdiv."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FDIV_CACHE", str(tmp_path_factory.mktemp("fdiv_cache")))
        yield


def _finite(tree):
    if isinstance(tree, dict):
        return all(_finite(v) for v in tree.values())
    if isinstance(tree, list):
        return all(_finite(v) for v in tree)
    return not isinstance(tree, float) or math.isfinite(tree)


def test_configs_are_discovered():
    assert "classifier_digits" in CONFIG_NAMES and "classifier_fashion" in CONFIG_NAMES


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_file_conventions(name):
    import importlib.util

    path = os.path.join(REPO, "configs", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = module.__doc__ or ""
    assert f"python -m experiments.main --config=configs/{name}.py" in doc, "docstring must hold the run command"
    assert "CPU" in doc, "docstring must state the expected runtime on a 2-core CPU"
    full, quick = module.get_config(), module.get_config("quick")
    assert full.experiment in experiments.EXPERIMENTS and quick.experiment == full.experiment
    assert quick.num_steps <= full.num_steps
    with pytest.raises(ValueError):
        module.get_config("no-such-variant")


def _data_available(config):
    if config.get("data") == "fashion_mnist" or config.get("dataset") == "fashion_mnist":
        from fdiv import data
        return os.path.exists(os.path.join(data._fashion_mnist_dir(), "train-images-idx3-ubyte.gz"))
    return True


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_quick_config_trains_end_to_end(name, tmp_path):
    config = experiments.load_config(name, "quick")
    if not _data_available(config):
        pytest.skip("needs apt-get install dataset-fashion-mnist")
    workdir = str(tmp_path / name)
    experiments.run(config, workdir)
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["num_steps"] == config.num_steps
    assert _finite(summary)
    records = metrics_lib.read_metrics(workdir)
    assert records and records[-1]["step"] == config.num_steps
    assert os.path.exists(os.path.join(workdir, "curves.png"))
    assert str(config.num_steps) in os.listdir(os.path.join(workdir, "checkpoints"))


def test_run_rejects_nan_and_unknown_experiment(tmp_path):
    config = experiments.load_config("classifier_digits", "quick")
    config.learning_rate = float("nan")
    with pytest.raises(ValueError, match="config.learning_rate"):
        experiments.run(config, str(tmp_path))
    config = experiments.load_config("classifier_digits", "quick")
    config.experiment = "nope"
    with pytest.raises(ValueError, match=r"unknown experiment 'nope'.*classifier"):
        experiments.run(config, str(tmp_path))
    with pytest.raises(ValueError, match="available configs"):
        experiments.load_config("no_such_config")


def test_registered_but_missing_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(experiments.EXPERIMENTS, "ghost", "experiments.ghost")
    with pytest.raises(ValueError, match=r"registered as module 'experiments.ghost'.*does not exist"):
        experiments.get_experiment("ghost")


def test_classifier_reproducible_and_feature_extractor_cached(tmp_path):
    from experiments import classifier

    config = experiments.load_config("classifier_digits", "quick")
    config.num_steps = 6
    a = classifier.train_and_evaluate(config, str(tmp_path / "a"))
    b = classifier.train_and_evaluate(config, str(tmp_path / "b"))
    assert a["test_accuracy"] == b["test_accuracy"]
    assert (metrics_lib.strip_timing(metrics_lib.read_metrics(str(tmp_path / "a")))
            == metrics_lib.strip_timing(metrics_lib.read_metrics(str(tmp_path / "b"))))

    cache = str(tmp_path / "cache")
    ext = classifier.load_or_train_classifier("digits", cache, quick=True, print_fn=lambda s: None)
    records = metrics_lib.read_metrics(ext.workdir)
    ext2 = classifier.load_or_train_classifier("digits", cache, quick=True, print_fn=lambda s: None)
    assert ext2.workdir == ext.workdir
    assert metrics_lib.read_metrics(ext.workdir) == records  # nothing retrained
    with open(os.path.join(ext.workdir, "summary.json")) as f:
        assert json.load(f)["resumed_from"] == experiments.load_config("classifier_digits", "quick").num_steps

    from fdiv import data

    test = data.load_digits()["test"]
    feats = np.asarray(ext.features(test.images, batch_size=100))  # 359 = 3 full chunks + padded rest
    assert feats.shape == (len(test), ext.feature_dim) and np.all(np.isfinite(feats))
    np.testing.assert_array_equal(feats, np.asarray(ext2.features(test.images)))
    acc = float(np.mean(np.argmax(np.asarray(ext.logits(test.images)), -1) == test.labels))
    assert acc == pytest.approx(ext.test_accuracy, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[N, 8, 8, 1\]"):
        ext.features(np.zeros((2, 28, 28, 1), np.float32))
