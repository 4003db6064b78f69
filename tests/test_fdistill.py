"""End-to-end tests of experiments/fdistill.py and its stages on tiny settings."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import configs
import fdiv
from experiments import edm_teacher, fdistill, settings
from fdiv import distill
from fdiv.train.config import ConfigError


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fdistill_cache"))


@pytest.fixture(scope="module")
def js_run(cache, tmp_path_factory):
    """One full quick run (JS), shared by the tests that compare against it."""
    workdir = tmp_path_factory.mktemp("fdistill_js") / "full"
    summary = fdistill.train_and_evaluate(
        _config(cache, divergence="js"), str(workdir), print_fn=lambda s: None
    )
    return summary, workdir


def _config(cache, **overrides):
    c = configs.get_config("fdistill_toy2d", "quick")
    c.cache_dir = cache
    for k, v in overrides.items():
        c[k] = v
    return c


def test_toy_quick_end_to_end_and_exact_resume(cache, js_run, tmp_path):
    full, run = js_run
    models = full["models"]
    assert set(models) == {"target", "teacher", "generator_init", "student"}
    # Teacher trained once into the cache, with its sampler's reference metrics.
    tdir = full["teacher_dir"]
    assert tdir.startswith(cache) and os.path.exists(os.path.join(tdir, "cache_key.json"))
    assert models["teacher"]["num_evaluations"] == 2 * 4 - 1
    for key in (
        "modes_recovered",
        "precision",
        "weight_error",
        "energy_distance",
        "energy_distance_large",
    ):
        for part in ("student", "generator_init", "teacher", "target"):
            assert np.isfinite(models[part][key]), (part, key)
    # A fresh target draw is the floor: all modes, (near) exact precision and weights.
    assert models["target"]["modes_recovered"] == 8 and models["target"]["precision"] > 0.98
    assert models["target"]["weight_error"] < 0.15
    assert abs(models["target"]["energy_distance_large"]) < 0.02
    # One block per model: nothing duplicated at the top level, timings say what they cover.
    assert not {"eval", "student", "teacher", "target", "generator_init"} & set(full)
    assert {"stages_sec", "distill_loop_sec", "total_sec"} <= set(full["timing"])
    on_disk = json.load(open(run / "summary.json"))
    assert on_disk["models"]["student"] == models["student"]
    assert (run / "metrics.jsonl").exists() and (run / "samples" / "teacher.png").exists()
    assert (run / "samples" / "student_0000006.png").exists()
    assert (run / "samples" / "side_by_side.png").stat().st_size > 0
    assert (run / "curves.png").stat().st_size > 0
    records = [json.loads(l) for l in open(run / "metrics.jsonl")]
    gen_records = [r for r in records if "gen_surrogate" in r]
    assert gen_records and all(np.isfinite(r["gen_surrogate"]) for r in gen_records)

    # A run interrupted after step 4 (Ctrl-C) and resumed gives the same evaluation bit for
    # bit, and reuses the cached teacher (its training loop has nothing left to do).
    def interrupt(line):
        if line.startswith("step 4/6"):
            raise KeyboardInterrupt

    part_dir = str(tmp_path / "part")
    with pytest.raises(KeyboardInterrupt):
        fdistill.train_and_evaluate(_config(cache, divergence="js"), part_dir, print_fn=interrupt)
    lines = []
    resumed = fdistill.train_and_evaluate(
        _config(cache, divergence="js"), part_dir, print_fn=lines.append
    )
    assert resumed["training"]["resumed_from"] == 4
    assert resumed["teacher_dir"] == tdir
    assert not any(l.startswith("[teacher]") for l in lines), lines
    assert resumed["models"]["student"] == models["student"]
    # The result is printed in context: teacher and target floor beside the student.
    assert any(l.startswith("result: one-step student (js") for l in lines)
    assert any("target floor" in l for l in lines) and any("teacher (Heun" in l for l in lines)


def test_teacher_cache_key_is_what_changes_the_model(cache, js_run):
    tdir = js_run[0]["teacher_dir"]
    stage = settings.from_config(settings.FDistillConfig, _config(cache)).teacher_stage()
    assert edm_teacher.cache_entry(stage) == tdir
    # Logging, checkpointing and sampler fields reuse the cached teacher ...
    c = _config(cache)
    c.teacher.log_every, c.teacher.sample_steps, c.teacher.checkpoint_every_steps = 7, 2, 5
    lines = []
    teacher = edm_teacher.load_or_train(
        settings.from_config(settings.FDistillConfig, c).teacher_stage(), print_fn=lines.append
    )
    assert teacher.directory == tdir and not lines
    # ... while the number of training steps (or the seed) is a different teacher.
    for field, value in (("num_steps", 31), ("seed", 1)):
        c = _config(cache)
        c.teacher[field] = value
        other = settings.from_config(settings.FDistillConfig, c).teacher_stage()
        assert edm_teacher.cache_entry(other) != tdir, field


def test_invalid_settings_are_rejected_before_work(cache, tmp_path):
    bad = _config(cache, divergence="kll", batch_size=0, generator_lr=-1.0, disc_features="x")
    bad.num_steps = 0
    with pytest.raises(ConfigError) as e:
        fdistill.train_and_evaluate(bad, str(tmp_path / "bad"), print_fn=lambda s: None)
    msgs = e.value.problems
    assert any("did you mean 'kl'" in m for m in msgs), msgs
    assert any(m.startswith("config.batch_size=0") for m in msgs), msgs
    assert any(m.startswith("config.generator_lr=-1.0") for m in msgs), msgs
    assert any(m.startswith("config.num_steps=0") for m in msgs), msgs
    assert any("disc_features" in m for m in msgs), msgs
    assert len(msgs) == 5, msgs
    assert not (tmp_path / "bad" / "checkpoints").exists()
    with pytest.raises(ValueError, match="total_variation.*no f-distill weight"):
        fdistill.train_and_evaluate(
            _config(cache, divergence="total_variation"),
            str(tmp_path / "tv"),
            print_fn=lambda s: None,
        )
    with pytest.raises(ValueError, match="gan_weigth is not a field.*did you mean .gan_weight."):
        fdistill.train_and_evaluate(
            _config(cache, gan_weigth=1.0), str(tmp_path / "x"), print_fn=lambda s: None
        )
    with pytest.raises(ValueError, match="generator_sigma must be 0"):
        fdistill.train_and_evaluate(
            _config(cache, generator_sigma=-0.5), str(tmp_path / "g"), print_fn=lambda s: None
        )
    images = configs.get_config("fdistill_digits", "quick")
    images.cache_dir, images.eval_ed_samples = cache, 100
    with pytest.raises(ValueError, match="eval_ed_samples applies to the toy targets"):
        fdistill.train_and_evaluate(images, str(tmp_path / "img"), print_fn=lambda s: None)


def test_divergence_kw_reaches_fdiv_get(cache):
    c = _config(cache, divergence="alpha")
    c.divergence_kw.alpha = 0.3
    cfg = fdistill.read_config(c)
    assert fdistill.divergence_of(cfg) == fdiv.get("alpha", alpha=0.3)
    assert fdistill.divergence_label(cfg) == "alpha(alpha=0.3)"
    log_r = np.linspace(-2.0, 2.0, 9)
    np.testing.assert_allclose(
        distill.weights(log_r, fdistill.divergence_of(cfg), normalize=False),
        distill.weights(log_r, fdiv.get("alpha", alpha=0.3), normalize=False),
    )
    # alpha = 1 is forward KL, h(r) = r.
    c.divergence_kw.alpha = 1.0
    h = distill.weights(
        log_r,
        fdistill.divergence_of(fdistill.read_config(c)),
        logit_clip=None,
        ratio_clip=None,
        normalize=False,
    )
    np.testing.assert_allclose(h, np.exp(log_r), rtol=1e-5)
    with pytest.raises(ConfigError, match="config.divergence='js'.*alpha"):
        c = _config(cache, divergence="js")
        c.divergence_kw.alpha = 0.3
        fdistill.read_config(c)


def _learning_config(cache):
    """A ring8 run of a few hundred steps: a small teacher, forward KL, no GAN term (so that
    only the f-distill gradient moves the generator)."""
    c = configs.get_config("fdistill_toy2d")
    c.cache_dir = cache
    t = c.teacher
    t.net.hidden, t.net.depth, t.batch_size = 64, 2, 256
    t.num_steps, t.log_every, t.sample_steps = 1500, 500, 8
    c.divergence = "forward_kl"
    c.gan_weight, c.generator_ema = 0.0, 0.0
    c.batch_size, c.disc_hidden = 128, 64
    c.num_steps, c.log_every, c.eval_every, c.checkpoint_every_steps = 400, 100, 0, 0
    c.eval_samples, c.eval_ed_samples = 1000, 0
    return c


def test_fdistill_learns(cache, tmp_path):
    # With the generator gradient's sign flipped (distill.fdistill_loss negated) the same run
    # ends with energy distance ~17 and no modes: these assertions fail.
    s = fdistill.train_and_evaluate(
        _learning_config(cache), str(tmp_path / "learn"), print_fn=lambda s: None
    )
    init, student = s["models"]["generator_init"], s["models"]["student"]
    assert init["energy_distance"] > 1.0 and init["modes_recovered"] == 0
    assert student["energy_distance"] < 0.1 * init["energy_distance"], (init, student)
    assert student["modes_recovered"] >= 6, student


_SHARDED_SCRIPT = """
import json, sys
import configs
from experiments import fdistill
c = configs.get_config("fdistill_toy2d", "quick")
c.cache_dir = sys.argv[1]
c.divergence = "js"
s = fdistill.train_and_evaluate(c, sys.argv[2], print_fn=lambda s: None)
print(json.dumps({"devices": s["num_devices"], "models": s["models"]}))
"""


def test_eight_devices_match_one_device(js_run, tmp_path):
    # Data-parallel over 8 simulated CPU devices (batches sharded on the 'data' axis, global
    # means) reproduces the single-device run up to float reassociation.
    one = js_run[0]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8",
        JAX_PLATFORMS="cpu",
        PYTHONPATH=repo,
    )
    out = subprocess.run(
        [sys.executable, "-c", _SHARDED_SCRIPT, str(tmp_path / "cache2"), str(tmp_path / "eight")],
        env=env,
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    eight = json.loads(out.stdout.strip().splitlines()[-1])
    assert eight["devices"] == 8 and one["num_devices"] == 1
    for part in ("teacher", "student"):
        for k in ("precision", "weight_error", "energy_distance", "energy_distance_large"):
            np.testing.assert_allclose(
                eight["models"][part][k],
                one["models"][part][k],
                rtol=1e-3,
                atol=1e-4,
                err_msg=f"{part} {k}",
            )
