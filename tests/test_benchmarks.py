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


def test_alpha_sweep_takes_the_kl_runs_as_alpha_0_and_1():
    specs = [("alpha", {"alpha": 0.5}), ("reverse_kl", {}), ("forward_kl", {}), ("js", {})]
    labels = [fdistill_divergences.label(n, kw) for n, kw in specs]
    points = fdistill_divergences.alpha_points(specs, labels)
    assert points == [(0.0, "reverse_kl"), (0.5, "alpha=0.5"), (1.0, "forward_kl")]
    # An alpha:1 run is the alpha = 1 point itself; without alpha runs there is no sweep.
    specs[2] = ("alpha", {"alpha": 1.0})
    labels = [fdistill_divergences.label(n, kw) for n, kw in specs]
    assert fdistill_divergences.alpha_points(specs, labels)[-1] == (1.0, "alpha=1")
    assert fdistill_divergences.alpha_points([("reverse_kl", {}), ("js", {})], ["a", "b"]) == []

    def summary(modes, err):
        m = {"modes_recovered": modes, "precision": 0.5, "weight_error": err}
        return {"models": {"student": {**m, "energy_distance": err / 10}}}

    runs = {"reverse_kl/0": summary(5, 0.5), "alpha=0.5/0": summary(8, 0.25)}
    runs["reverse_kl/1"], runs["alpha=0.5/1"] = summary(7, 0.7), summary(8, 0.15)
    table = fdistill_divergences.alpha_markdown_table(
        runs, [(0.0, "reverse_kl"), (0.5, "alpha=0.5")], [0, 1]
    ).splitlines()
    assert table[0] == "| alpha | modes | precision | weight error | energy distance |"
    assert table[2].startswith(
        "| 0 (reverse KL) | 6.0 +- 1.0 | 0.5000 +- 0.0000 | 0.6000 +- 0.1000 |"
    )
    assert table[3].startswith("| 0.5 | 8.0 +- 0.0 | 0.5000 +- 0.0000 | 0.2000 +- 0.0500 |")
