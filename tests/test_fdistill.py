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
