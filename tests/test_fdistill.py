"""End-to-end tests of experiments/fdistill.py on tiny settings."""

import json
import os

import numpy as np
import pytest

import experiments
from experiments import fdistill


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("fdistill_cache"))


def _config(cache, **overrides):
    c = experiments.load_config("fdistill_toy2d", "quick")
    c.cache_dir = cache
    for k, v in overrides.items():
        c[k] = v
    return c


def test_toy_quick_end_to_end_and_exact_resume(cache, tmp_path):
    lines = []
    full = fdistill.train_and_evaluate(_config(cache, divergence="js"), str(tmp_path / "full"),
                                       print_fn=lines.append)
    # Teacher trained once into the cache, with its sampler's reference metrics.
    tdir = full["teacher_dir"]
    assert tdir.startswith(cache) and os.path.exists(os.path.join(tdir, "summary.json"))
    assert full["teacher"]["num_evaluations"] == 2 * 4 - 1
    for key in ("modes_recovered", "precision", "weight_error", "energy_distance"):
        assert key in full["student"] and key in full["generator_init"]
        assert np.isfinite(full["student"][key])
    run = tmp_path / "full"
    assert (run / "metrics.jsonl").exists() and (run / "samples" / "teacher.png").exists()
    assert (run / "samples" / "student_0000006.png").exists()
    records = [json.loads(l) for l in open(run / "metrics.jsonl")]
    gen_records = [r for r in records if "gen_surrogate" in r]
    assert gen_records and all(np.isfinite(r["gen_surrogate"]) for r in gen_records)

    # Interrupted run (3 steps) resumed to 6 gives the same evaluation bit for bit, and
    # reuses the cached teacher (its training loop has nothing left to do).
    part_dir = str(tmp_path / "part")
    fdistill.train_and_evaluate(_config(cache, divergence="js", num_steps=3), part_dir,
                                print_fn=lambda s: None)
    lines = []
    resumed = fdistill.train_and_evaluate(_config(cache, divergence="js"), part_dir,
                                          print_fn=lines.append)
    assert resumed["resumed_from"] == 3
    assert resumed["teacher_dir"] == tdir
    assert resumed["student"] == full["student"]


def test_other_divergence_reuses_teacher_and_tv_is_rejected(cache, tmp_path):
    lines = []
    out = fdistill.train_and_evaluate(_config(cache, divergence="forward_kl", num_steps=2,
                                              eval_every=2),
                                      str(tmp_path / "fkl"), print_fn=lines.append)
    assert not any("[teacher] step" in l and "steps/s" in l for l in lines), lines
    assert out["divergence"] == "forward_kl"
    with pytest.raises(ValueError, match="total_variation"):
        fdistill.train_and_evaluate(_config(cache, divergence="total_variation"),
                                    str(tmp_path / "tv"), print_fn=lambda s: None)
    with pytest.raises(ValueError, match="disc_features"):
        fdistill.train_and_evaluate(_config(cache, disc_features="pixels"),
                                    str(tmp_path / "bad"), print_fn=lambda s: None)
