"""The f-distill benchmark scripts on tiny settings (their numbers live in the README)."""

import os

import numpy as np
import pytest

import experiments
from benchmarks import fdistill_divergences, fdistill_steps


@pytest.fixture(scope="module")
def quick_config(tmp_path_factory):
    c = experiments.load_config("fdistill_toy2d", "quick")
    c.cache_dir = str(tmp_path_factory.mktemp("bench_cache"))
    return c


def test_step_timing_reports_each_step(quick_config):
    r = fdistill_steps.measure(quick_config, calls=3, repeats=2, print_fn=lambda s: None)
    for name in ("critic_step", "generator_step"):
        assert r[name]["compile_sec"] > 0 and r[name]["ms_per_step"] > 0
    k = quick_config.generator_every
    want = 1e3 / (r["critic_step"]["ms_per_step"] + r["generator_step"]["ms_per_step"] / k)
    np.testing.assert_allclose(r["loop_steps_per_sec"], want, rtol=1e-12)
    assert r["num_devices"] == 1 and r["generator_every"] == k


def test_divergence_comparison_writes_table_and_figure(quick_config, tmp_path):
    out = fdistill_divergences.compare(quick_config, str(tmp_path), ["js", "reverse_kl"],
                                       seeds=[0], print_fn=lambda s: None)
    table = open(tmp_path / "table.md").read()
    assert table == out["table"] + "\n"
    lines = table.splitlines()
    assert "energy distance (n=1000)" in lines[0]
    labels = [l.split("|")[1].strip() for l in lines[2:] if l.startswith("|")]
    assert labels == ["target (fresh draw: sampling-noise floor)", "teacher (Heun)",
                      "generator at init", "js (one step)", "reverse_kl (one step)"]
    assert os.path.getsize(tmp_path / "samples.png") > 0
    assert set(out["runs"]) == {"js/0", "reverse_kl/0"}
