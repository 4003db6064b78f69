"""The f-distill benchmark scripts on tiny settings (their numbers live in the README)."""

import json
import os

import numpy as np
import pytest

import configs
from benchmarks import fdistill_divergences, fdistill_steps


@pytest.fixture(scope="module")
def quick_config(tmp_path_factory):
    c = configs.get_config("fdistill_toy2d", "quick")
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


def test_divergence_specs():
    assert fdistill_divergences.parse_divergence("js") == ("js", {})
    assert fdistill_divergences.parse_divergence("alpha:-0.5") == ("alpha", {"alpha": -0.5})
    assert fdistill_divergences.parse_divergence("t_power:2") == ("t_power", {"t": 2.0})
    with pytest.raises(ValueError, match="to 'js', which has no parameter"):
        fdistill_divergences.parse_divergence("js:0.5")


def test_comparison_table_figures_and_keyed_reuse(quick_config, tmp_path, monkeypatch):
    divs = ["alpha:0.5", "alpha:1"]
    out = fdistill_divergences.compare(
        quick_config, str(tmp_path), divs, seeds=[0], print_fn=lambda s: None
    )
    table = open(tmp_path / "table.md").read()
    assert table == out["table"] + "\n"
    lines = table.splitlines()
    assert "energy distance (n=1000)" in lines[0]
    labels = [l.split("|")[1].strip() for l in lines[2:] if l.startswith("|")]
    assert labels == [
        "target (fresh draw: sampling-noise floor)",
        "teacher (Heun)",
        "generator at init",
        "alpha=0.5 (one step)",
        "alpha=1 (one step)",
    ]
    assert out["runs"]["alpha=0.5/0"]["divergence"] == "alpha(alpha=0.5)"
    for name in ("samples.png", "alpha_sweep.png"):
        assert os.path.getsize(tmp_path / name) > 0
    results = json.load(open(tmp_path / "results.json"))
    assert results["code_version"] and results["reused"] == []

    # Same config and code: reused. Another code version: the old run is moved aside and
    # the run is repeated (a stale result never enters a table).
    again = fdistill_divergences.compare(
        quick_config, str(tmp_path), ["alpha:1"], seeds=[0], print_fn=lambda s: None
    )
    assert again["reused"] == ["alpha=1/0"]
    assert again["runs"]["alpha=1/0"]["models"] == out["runs"]["alpha=1/0"]["models"]
    monkeypatch.setattr(fdistill_divergences, "code_version", lambda: "other")
    lines = []
    rerun = fdistill_divergences.compare(
        quick_config, str(tmp_path), ["alpha:1"], seeds=[0], print_fn=lines.append
    )
    assert rerun["reused"] == [] and any("moved to" in l for l in lines)
    assert any(n.startswith("alpha=1_seed0.stale-") for n in os.listdir(tmp_path))
    assert (
        rerun["runs"]["alpha=1/0"]["models"]["student"]
        == out["runs"]["alpha=1/0"]["models"]["student"]
    )
