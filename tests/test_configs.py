"""Configs: a package of base configs and discovered variants; typed defaults agree with the
base configs; every variant validates and every `quick` variant runs end to end; the stage
cache and the classifier stage."""

import ast
import json
import math
import os
import threading
import time

import numpy as np
import pytest

import configs
import experiments
from experiments import cache, settings
from fdiv.train import metrics as metrics_lib
from fdiv.train.config import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TYPED = {
    "fdistill": settings.FDistillConfig,
    "classifier": settings.ClassifierConfig,
    "edm_teacher": settings.EDMTeacherConfig,
    "kd_fashion": settings.KDFashionConfig,
    "kd_lm": settings.KDLMConfig,
    "estimators": settings.EstimatorsConfig,
    "fdpg": settings.FDPGConfig,
}
# The base config of each experiment: its typed defaults.
BASES = {
    "fdistill": "fdistill_toy2d",
    "classifier": "classifier_digits",
    "edm_teacher": "edm_teacher_toy2d",
    "kd_fashion": "kd_fashion",
    "kd_lm": "kd_lm",
    "estimators": "estimators_gauss",
    "fdpg": "fdpg",
}
CONFIG_NAMES = configs.names()


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


def test_configs_and_variants_are_discovered():
    files = sorted(
        f[:-3]
        for f in os.listdir(os.path.join(REPO, "configs"))
        if f.endswith(".py") and not f.startswith("_")
    )
    assert CONFIG_NAMES == files
    assert configs.variants("fdistill_toy2d") == ("grid25", "grid25_quick", "quick")
    assert configs.variants("fdistill_fashion") == ("cpu", "quick")


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_file_conventions(name):
    module = __import__(f"configs.{name}", fromlist=["_"])
    doc = module.__doc__ or ""
    assert f"python -m experiments.main --config=configs/{name}.py" in doc, "run command"
    assert "CPU" in doc, "docstring must state the expected runtime on a 2-core CPU"
    assert "quick" in configs.variants(name)
    full, quick = configs.get_config(name), configs.get_config(name, "quick")
    assert full.experiment in experiments.EXPERIMENTS and quick.experiment == full.experiment
    steps = (
        (lambda c: c.teacher.num_steps)
        if full.experiment == "edm_teacher"
        else (lambda c: c.num_steps)
    )
    assert steps(quick) <= steps(full)
    with pytest.raises(ValueError, match=r"no variant 'quik'; did you mean 'quick'"):
        configs.get_config(name, "quik")
    # Configs derive from each other by calling them, never by loading files by path.
    source = open(os.path.join(REPO, "configs", f"{name}.py")).read()
    assert "spec_from_file_location" not in source and "VARIANTS" not in source


@pytest.mark.parametrize("experiment", sorted(BASES))
def test_typed_defaults_and_base_configs_agree(experiment):
    cls = TYPED[experiment]
    base = configs.get_config(BASES[experiment])
    assert base.experiment == experiment
    assert settings.from_config(cls, base) == cls()
    # And back: the ConfigDict of the typed defaults is the base config.
    assert settings.to_config_dict(cls()).to_dict() == base.to_dict()


@pytest.mark.parametrize(
    "name,variant", [(n, v) for n in CONFIG_NAMES for v in (None,) + configs.variants(n)]
)
def test_every_variant_is_a_valid_typed_config(name, variant):
    c = configs.get_config(name, variant)
    if c.experiment not in TYPED:
        pytest.skip(
            f"experiment {c.experiment!r} reads its ConfigDict directly (no typed config yet)"
        )
    cfg = settings.read(TYPED[c.experiment], c)
    if c.experiment == "estimators":  # no loop options: one step per (pair, size, seed) cell
        assert cfg.num_steps == len(cfg.cells())
        return
    loop = cfg.loop if hasattr(cfg, "loop") else cfg.teacher.loop
    assert loop.resume == "auto"  # --config.resume=restart is an existing field


def test_typed_config_reports_every_bad_field_at_once(tmp_path):
    c = configs.get_config("classifier_digits", "quick")
    c.batch_size, c.learning_rate, c.num_steps = 0, 0.0, -3
    c.model.hiden = 3
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(ConfigError) as e:
        settings.read(settings.ClassifierConfig, c, str(blocked / "run"))
    msgs = e.value.problems
    assert any(
        m.startswith("config.model.hiden is not a field (did you mean 'hidden'") for m in msgs
    )
    assert any(m.startswith("config.num_steps=-3 must be >= 0") for m in msgs), msgs
    assert any(m.startswith("--workdir=") and "cannot be created" in m for m in msgs), msgs
    c.model.hiden = None
    del c.model["hiden"]
    c.num_steps = 0
    with pytest.raises(ConfigError) as e:
        settings.read(settings.ClassifierConfig, c, str(blocked / "run"))
    assert sorted(m.split("=")[0] for m in e.value.problems) == [
        "--workdir",
        "config.batch_size",
        "config.learning_rate",
        "config.num_steps",
    ]
    assert "\n" not in str(e.value)  # one line


def _data_available(config):
    if config.get("data") == "fashion_mnist" or config.get("dataset") == "fashion_mnist":
        from fdiv import data

        try:
            data.load_images("fashion_mnist")
        except (OSError, ValueError):
            return False
    return True


# Experiments that compare several runs in one workdir (one per divergence or loss) have their
# own end-to-end tests of the quick variant, with the layout they write.
OWN_END_TO_END_TEST = {"fdpg": "tests/test_fdpg.py", "kd_fashion": "tests/test_kd_fashion.py"}


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_quick_config_trains_end_to_end(name, tmp_path):
    config = configs.get_config(name, "quick")
    if config.experiment in OWN_END_TO_END_TEST:
        pytest.skip(f"runs in {OWN_END_TO_END_TEST[config.experiment]}")
    if not _data_available(config):
        pytest.skip("needs apt-get install dataset-fashion-mnist")
    workdir = str(tmp_path / name)
    summary = experiments.run(config, workdir)
    with open(os.path.join(workdir, "summary.json")) as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    assert _finite(summary)
    if config.experiment == "edm_teacher":
        assert os.path.getsize(os.path.join(workdir, "samples.png")) > 0
        return
    records = metrics_lib.read_metrics(workdir)
    assert records and records[-1]["step"] == config.num_steps
    assert os.path.exists(os.path.join(workdir, "curves.png"))
    assert str(config.num_steps) in os.listdir(os.path.join(workdir, "checkpoints"))


def test_run_rejects_nan_and_unknown_experiment(tmp_path):
    config = configs.get_config("classifier_digits", "quick")
    config.learning_rate = float("nan")
    with pytest.raises(ValueError, match="config.learning_rate"):
        experiments.run(config, str(tmp_path))
    config = configs.get_config("classifier_digits", "quick")
    config.experiment = "nope"
    with pytest.raises(ValueError, match=r"unknown experiment 'nope'.*classifier"):
        experiments.run(config, str(tmp_path))
    with pytest.raises(ValueError, match="no config 'no_such_config'.*classifier_digits"):
        experiments.load_config("no_such_config")


def test_registered_but_missing_module_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(experiments.EXPERIMENTS, "ghost", "experiments.ghost")
    with pytest.raises(
        ValueError, match=r"registered as module 'experiments.ghost'.*does not exist"
    ):
        experiments.get_experiment("ghost")


def _imports(path):
    tree = ast.parse(open(path).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_stages_never_import_the_experiments_that_use_them():
    for stage in ("edm_teacher", "classifier", "problems", "settings", "cache"):
        imported = _imports(os.path.join(REPO, "experiments", f"{stage}.py"))
        assert not {"experiments.fdistill"} & imported, stage
    assert "experiments.edm_teacher" not in _imports(
        os.path.join(REPO, "experiments", "classifier.py")
    )


def test_cache_two_concurrent_runs_and_a_failed_one(tmp_path):
    root = str(tmp_path / "c")
    trained = []

    def train(directory):
        trained.append(directory)
        time.sleep(0.2)  # both runs are inside train_fn at once
        with open(os.path.join(directory, "weights.txt"), "w") as f:
            f.write(str(len(trained)))

    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(
                cache.cached_run(
                    "stage", {"a": 1}, train, cache_dir=root, code="v1", print_fn=lambda s: None
                )
            )
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(trained) == 2 and results[0] == results[1]
    assert cache.is_complete(results[0]) and open(os.path.join(results[0], "weights.txt")).read()
    assert sorted(os.listdir(root)) == [os.path.basename(results[0])]  # no temporary left
    # A hit trains nothing; another key or code version is another entry.
    assert cache.cached_run("stage", {"a": 1}, train, cache_dir=root, code="v1") == results[0]
    assert len(trained) == 2
    assert cache.entry_dir("stage", {"a": 2}, cache_dir=root, code="v1") != results[0]
    assert cache.entry_dir("stage", {"a": 1}, cache_dir=root, code="v2") != results[0]

    def crash(directory):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.cached_run("stage", {"a": 3}, crash, cache_dir=root, print_fn=lambda s: None)
    assert sorted(os.listdir(root)) == [os.path.basename(results[0])]
    assert list(cache.entries(root)) == [results[0]]


def test_code_version_follows_the_sources(tmp_path, monkeypatch):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    monkeypatch.setattr(cache, "REPO", str(tmp_path))
    v1 = cache.code_version("pkg")
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    cache._source_digest.cache_clear()
    assert cache.code_version("pkg") != v1


def test_classifier_reproducible_and_feature_extractor_cached(tmp_path):
    from experiments import classifier

    config = configs.get_config("classifier_digits", "quick")
    config.num_steps = 6
    a = classifier.train_and_evaluate(config, str(tmp_path / "a"))
    b = classifier.train_and_evaluate(config, str(tmp_path / "b"))
    assert a["test_accuracy"] == b["test_accuracy"]
    assert metrics_lib.strip_timing(
        metrics_lib.read_metrics(str(tmp_path / "a"))
    ) == metrics_lib.strip_timing(metrics_lib.read_metrics(str(tmp_path / "b")))

    root = str(tmp_path / "cache")
    quick = configs.get_config("classifier_digits", "quick")
    lines = []
    ext = classifier.load_or_train(quick, cache_dir=root, print_fn=lines.append)
    assert any("training classifier_digits" in l for l in lines)
    records = metrics_lib.read_metrics(ext.workdir)
    # Logging and evaluation fields do not change the model: the same entry, nothing trained.
    quick.log_every, quick.eval_every, quick.eval_batch_size = 5, 5, 100
    lines = []
    ext2 = classifier.load_or_train(quick, cache_dir=root, print_fn=lines.append)
    assert ext2.workdir == ext.workdir and not lines
    assert metrics_lib.read_metrics(ext.workdir) == records  # nothing retrained

    from fdiv import data

    test = data.load_digits()["test"]
    feats = np.asarray(ext.features(test.images, batch_size=100))  # 359 = 3 full chunks + rest
    assert feats.shape == (len(test), ext.feature_dim) and np.all(np.isfinite(feats))
    np.testing.assert_array_equal(feats, np.asarray(ext2.features(test.images)))
    acc = float(np.mean(np.argmax(np.asarray(ext.logits(test.images)), -1) == test.labels))
    assert acc == pytest.approx(ext.test_accuracy, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[N, 8, 8, 1\]"):
        ext.features(np.zeros((2, 28, 28, 1), np.float32))
