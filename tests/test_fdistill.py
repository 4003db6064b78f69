"""End-to-end tests of experiments/fdistill.py on tiny settings."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import experiments
from experiments import fdistill


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fdistill_cache"))


@pytest.fixture(scope="module")
def js_run(cache, tmp_path_factory):
    """One full quick run (JS), shared by the tests that compare against it."""
    workdir = tmp_path_factory.mktemp("fdistill_js") / "full"
    summary = fdistill.train_and_evaluate(_config(cache, divergence="js"), str(workdir),
                                          print_fn=lambda s: None)
    return summary, workdir


def _config(cache, **overrides):
    c = experiments.load_config("fdistill_toy2d", "quick")
    c.cache_dir = cache
    for k, v in overrides.items():
        c[k] = v
    return c


def test_toy_quick_end_to_end_and_exact_resume(cache, js_run, tmp_path):
    full, run = js_run
    # Teacher trained once into the cache, with its sampler's reference metrics.
    tdir = full["teacher_dir"]
    assert tdir.startswith(cache) and os.path.exists(os.path.join(tdir, "summary.json"))
    assert full["teacher"]["num_evaluations"] == 2 * 4 - 1
    for key in ("modes_recovered", "precision", "weight_error", "energy_distance",
                "energy_distance_large"):
        for part in ("student", "generator_init", "teacher", "target"):
            assert np.isfinite(full[part][key]), (part, key)
    # A fresh target draw is the floor: all modes, (near) exact precision and weights.
    assert full["target"]["modes_recovered"] == 8 and full["target"]["precision"] > 0.98
    assert full["target"]["weight_error"] < 0.15
    assert abs(full["target"]["energy_distance_large"]) < 0.02
    assert (run / "metrics.jsonl").exists() and (run / "samples" / "teacher.png").exists()
    assert (run / "samples" / "student_0000006.png").exists()
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
        fdistill.train_and_evaluate(_config(cache, divergence="js"), part_dir,
                                    print_fn=interrupt)
    lines = []
    resumed = fdistill.train_and_evaluate(_config(cache, divergence="js"), part_dir,
                                          print_fn=lines.append)
    assert resumed["resumed_from"] == 4
    assert resumed["teacher_dir"] == tdir
    assert not any(l.startswith("[teacher] step") for l in lines), lines
    assert resumed["student"] == full["student"]


def test_invalid_settings_are_rejected(cache, tmp_path):
    with pytest.raises(ValueError, match="total_variation"):
        fdistill.train_and_evaluate(_config(cache, divergence="total_variation"),
                                    str(tmp_path / "tv"), print_fn=lambda s: None)
    with pytest.raises(ValueError, match="disc_features"):
        fdistill.train_and_evaluate(_config(cache, disc_features="pixels"),
                                    str(tmp_path / "bad"), print_fn=lambda s: None)
    with pytest.raises(ValueError, match="unknown field"):
        fdistill.train_and_evaluate(_config(cache, learning_rate=1.0), str(tmp_path / "x"),
                                    print_fn=lambda s: None)
    with pytest.raises(ValueError, match="generator_sigma must be 0"):
        fdistill.train_and_evaluate(_config(cache, generator_sigma=-0.5), str(tmp_path / "g"),
                                    print_fn=lambda s: None)
    images = experiments.load_config("fdistill_digits", "quick")
    images.cache_dir, images.eval_ed_samples = cache, 100
    with pytest.raises(ValueError, match="eval_ed_samples applies to the toy targets"):
        fdistill.train_and_evaluate(images, str(tmp_path / "img"), print_fn=lambda s: None)


_SHARDED_SCRIPT = """
import json, sys
import experiments
from experiments import fdistill
c = experiments.load_config("fdistill_toy2d", "quick")
c.cache_dir = sys.argv[1]
c.divergence = "js"
s = fdistill.train_and_evaluate(c, sys.argv[2], print_fn=lambda s: None)
print(json.dumps({"devices": s["num_devices"], "teacher": s["teacher"], "student": s["student"]}))
"""


def test_eight_devices_match_one_device(js_run, tmp_path):
    # Data-parallel over 8 simulated CPU devices (batches sharded on the 'data' axis, global
    # means) reproduces the single-device run up to float reassociation.
    one = js_run[0]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu", PYTHONPATH=repo)
    out = subprocess.run([sys.executable, "-c", _SHARDED_SCRIPT, str(tmp_path / "cache2"),
                          str(tmp_path / "eight")], env=env, cwd=repo, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    eight = json.loads(out.stdout.strip().splitlines()[-1])
    assert eight["devices"] == 8 and one["num_devices"] == 1
    for part in ("teacher", "student"):
        for k in ("precision", "weight_error", "energy_distance", "energy_distance_large"):
            np.testing.assert_allclose(eight[part][k], one[part][k], rtol=1e-3, atol=1e-4,
                                       err_msg=f"{part} {k}")
