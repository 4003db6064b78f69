r"""Side-by-side comparison of f-distill divergences at the same seeds and budget.

Runs `experiments.fdistill` once per (divergence, seed) with everything else fixed (one
shared cached teacher), then writes to ``--workdir``:

- ``results.json``: every run's summary, the code version and the machine;
- ``table.md``: a Markdown table (mean +- std over seeds), target floor, teacher and initial
  generator rows first;
- ``samples.png``: target, teacher and every divergence's one-step samples (first seed);
- ``alpha_sweep.png`` and ``alpha_table.md`` (when two or more members of the alpha family
  ran, one of them as ``alpha:A``): each metric against alpha, mean +- std over seeds, with the
  teacher and the target floor as reference lines. Reverse and forward KL runs are the alpha = 0
  and 1 members (`fdiv.get("alpha", alpha=0)` has the same weight ``h = r^0`` as reverse KL), so
  ``--divergences=alpha:0.5,reverse_kl,forward_kl`` puts both KL runs into the sweep.

A finished run in the workdir is reused only when its key (the run's full config and the
code version: a hash of the ``fdiv/`` and ``experiments/`` sources) matches; otherwise it is
moved aside (``<run>.stale-<time>``) and run again, so a table never mixes code versions.

Divergences are names, or ``name:value`` for a divergence with one parameter
(``alpha:0.5`` is ``fdiv.get("alpha", alpha=0.5)``, ``t_power:2`` is ``t=2``); ``--alphas``
is a shortcut for ``alpha:a`` for each a, run before the ``--divergences`` given with it (without
``--alphas``, ``--divergences`` defaults to the six of the f-distill paper).

Usage (toy ring, the six divergences of the f-distill paper, three seeds; the alpha sweep)::

    python -m benchmarks.fdistill_divergences --config=configs/fdistill_toy2d.py \
        --workdir=runs/compare_ring8 --seeds=0,1,2
    python -m benchmarks.fdistill_divergences --config=configs/fdistill_toy2d.py \
        --workdir=runs/alpha_ring8 --alphas=-1,-0.5,0.25,0.5,0.75,1.5,2 \
        --divergences=reverse_kl,forward_kl --seeds=0
    python -m benchmarks.fdistill_divergences --config=configs/fdistill_digits.py \
        --workdir=runs/compare_digits --divergences=reverse_kl,js,forward_kl

Config overrides work as for ``experiments.main`` (``--config.num_steps=...``).
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

DIVERGENCES = (
    "reverse_kl",
    "softened_reverse_kl",
    "js",
    "squared_hellinger",
    "forward_kl",
    "jeffreys",
)
# The one parameter of the parametrised divergences, for ``name:value``.
PARAMETER = {"alpha": "alpha", "t_power": "t"}
TOY_COLUMNS = (
    ("modes_recovered", "modes"),
    ("precision", "precision"),
    ("weight_error", "weight error"),
    ("energy_distance", "energy distance"),
)
IMAGE_COLUMNS = (
    ("frechet_distance", "Frechet distance"),
    ("precision", "precision"),
    ("recall", "recall"),
)
KEY_FILE = "run_key.json"
# Members of the alpha family under their own names (docs/reference.md section 2).
ALPHA_MEMBERS = {"reverse_kl": 0.0, "forward_kl": 1.0}


def parse_divergence(spec: str) -> tuple[str, dict]:
    """``"js"`` -> ``("js", {})``; ``"alpha:0.5"`` -> ``("alpha", {"alpha": 0.5})``.

    Raises:
      ValueError: for a value given to a divergence without a parameter, or a bad number.
    """
    name, _, value = spec.strip().partition(":")
    if not value:
        return name, {}
    if name not in PARAMETER:
        raise ValueError(
            f"--divergences: {spec!r} gives a value to {name!r}, which has no "
            f"parameter; parametrised: {', '.join(f'{n}:VALUE' for n in PARAMETER)}"
        )
    try:
        return name, {PARAMETER[name]: float(value)}
    except ValueError:
        raise ValueError(f"--divergences: {spec!r}: {value!r} is not a number") from None


def label(name: str, kw: dict) -> str:
    """Run label: ``js``, ``alpha=0.5``."""
    if not kw:
        return name
    return ",".join(f"{k}={v:g}" for k, v in sorted(kw.items()))


def alpha_points(specs: Sequence[tuple[str, dict]], labels: Sequence[str]) -> list:
    """``[(alpha, label)]`` sorted by alpha: the ``alpha:A`` runs, and reverse / forward KL as
    alpha = 0 / 1 where no ``alpha:0`` / ``alpha:1`` ran. Empty unless an ``alpha:A`` ran."""
    points = {kw["alpha"]: lab for (name, kw), lab in zip(specs, labels) if name == "alpha"}
    if not points:
        return []
    for (name, _), lab in zip(specs, labels):
        if name in ALPHA_MEMBERS:
            points.setdefault(ALPHA_MEMBERS[name], lab)
    return sorted(points.items())


def code_version() -> str:
    """Hash of the sources a run's result depends on (``fdiv/``, ``experiments/``)."""
    from experiments import cache

    return cache.code_version("fdiv", "experiments")


def _run_key(config: Any) -> dict:
    return {"config": config.to_dict(), "code": code_version()}


def _reusable(run_dir: str, key: dict) -> dict | None:
    """The summary of a finished run with this key, or None."""
    key_path, summary_path = os.path.join(run_dir, KEY_FILE), os.path.join(run_dir, "summary.json")
    if not (os.path.exists(key_path) and os.path.exists(summary_path)):
        return None
    with open(key_path) as f:
        stored = json.load(f)
    if stored != json.loads(json.dumps(key, default=str)):
        return None
    with open(summary_path) as f:
        return json.load(f)


def compare(
    config: Any,
    workdir: str,
    divergences: Sequence[str] = DIVERGENCES,
    seeds: Sequence[int] = (0,),
    print_fn: Optional[Callable[[str], None]] = None,
) -> dict:
    """Runs every (divergence, seed) and writes results.json, table.md and the figures.

    Args:
      config: an f-distill config (``configs/fdistill_*.py``); its ``divergence``,
        ``divergence_kw`` and ``seed`` are set per run.
      workdir: output directory; run ``<label>_seed<seed>`` lives in a subdirectory.
      divergences: specs, see `parse_divergence` (each must have a weight h).
      seeds: seeds of the distillation (the teacher is shared).
      print_fn: progress sink for the runs (default print).

    Returns:
      ``{"runs": {"<label>/<seed>": summary}, "labels": [...], "table": markdown,
      "reused": [...]}``.
    """
    from experiments import fdistill

    pf = print_fn or (lambda s: print(s, flush=True))
    specs = [parse_divergence(d) for d in divergences]
    labels = [label(n, kw) for n, kw in specs]
    # Fail on a bad divergence before any run starts.
    for name, kw in specs:
        c = copy.deepcopy(config)
        c.divergence = name
        for k, v in kw.items():
            c.divergence_kw[k] = v
        fdistill.read_config(c)
    os.makedirs(workdir, exist_ok=True)
    runs, reused = {}, []
    for (name, kw), lab in zip(specs, labels):
        for seed in seeds:
            c = copy.deepcopy(config)
            c.divergence = name
            for k, v in kw.items():
                c.divergence_kw[k] = v
            c.seed = int(seed)
            run_dir = os.path.join(workdir, f"{lab}_seed{seed}")
            key = _run_key(c)
            summary = _reusable(run_dir, key)
            if summary is not None:
                pf(
                    f"=== {lab}, seed {seed}: reusing the finished run in {run_dir} (same config "
                    f"and code)"
                )
                reused.append(f"{lab}/{seed}")
            else:
                if os.path.exists(run_dir):
                    stale = f"{run_dir}.stale-{int(time.time())}"
                    pf(
                        f"=== {lab}, seed {seed}: {run_dir} is from another config or code "
                        f"version; moved to {stale}"
                    )
                    shutil.move(run_dir, stale)
                pf(f"=== {lab}, seed {seed} -> {run_dir}")
                summary = fdistill.train_and_evaluate(c, run_dir, print_fn=print_fn)
                with open(os.path.join(run_dir, KEY_FILE), "w") as f:
                    json.dump(key, f, indent=1, default=str)
                summary = json.loads(json.dumps(summary, default=str))
            runs[f"{lab}/{seed}"] = summary
    table = markdown_table(runs, labels, seeds)
    result = {
        "runs": runs,
        "labels": labels,
        "seeds": list(seeds),
        "code_version": code_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.processor()}",
        "reused": reused,
    }
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(result, f, indent=1, default=str)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(table + "\n")
    plot_samples(workdir, runs, labels, seeds[0])
    alphas = alpha_points(specs, labels)
    if len(alphas) >= 2:
        with open(os.path.join(workdir, "alpha_table.md"), "w") as f:
            f.write(alpha_markdown_table(runs, alphas, seeds) + "\n")
        plot_alpha_sweep(os.path.join(workdir, "alpha_sweep.png"), runs, alphas, seeds)
    return {**result, "table": table}


def _cell(values: list[float], integer: bool = False) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    fmt = (lambda v: f"{v:.1f}") if integer else (lambda v: f"{v:.4f}")
    if len(values) == 1:
        return f"{values[0]:.0f}" if integer else fmt(values[0])
    return f"{fmt(np.mean(values))} +- {fmt(np.std(values))}"


def _columns(first: dict) -> tuple:
    student = first["models"]["student"]
    if "modes_recovered" not in student:
        return IMAGE_COLUMNS
    cols = TOY_COLUMNS
    if "energy_distance_large" in student:
        n_large = first.get("config", {}).get("eval_ed_samples", "large")
        cols = cols + (("energy_distance_large", f"energy distance (n={n_large})"),)
    return cols


def markdown_table(runs: dict, labels: Sequence[str], seeds: Sequence[int]) -> str:
    """Markdown table of the runs (mean +- std over seeds)."""
    first = runs[f"{labels[0]}/{seeds[0]}"]
    cols = _columns(first)
    head = ["model", "network evaluations"] + [name for _, name in cols] + ["distill loop time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name, nfe, results, times):
        cells = [
            _cell([r.get(k) for r in results], integer=(k == "modes_recovered")) for k, _ in cols
        ]
        return "| " + " | ".join([name, str(nfe)] + cells + [times]) + " |"

    models = first["models"]
    if models.get("target"):
        lines.append(row("target (fresh draw: sampling-noise floor)", "-", [models["target"]], "-"))
    lines.append(
        row(
            "teacher (Heun)",
            models["teacher"].get("num_evaluations", "-"),
            [models["teacher"]],
            "-",
        )
    )
    lines.append(row("generator at init", 1, [models["generator_init"]], "-"))
    for lab in labels:
        rs = [runs[f"{lab}/{s}"] for s in seeds]
        times = [r["timing"].get("distill_loop_sec") for r in rs]
        times = [t for t in times if t is not None]
        lines.append(
            row(
                f"{lab} (one step)",
                1,
                [r["models"]["student"] for r in rs],
                f"{np.mean(times):.0f}" if times else "-",
            )
        )
    n = len(seeds)
    lines.append("")
    lines.append(
        f"{n} seed{'s' if n > 1 else ''} ({', '.join(map(str, seeds))}); "
        f"data {first.get('data')}; same teacher, budget and evaluation samples."
    )
    return "\n".join(lines)


def alpha_markdown_table(
    runs: dict, alphas: Sequence[tuple[float, str]], seeds: Sequence[int]
) -> str:
    """One row per alpha (mean +- std over seeds); KL runs are named in their rows."""
    cols = _columns(runs[f"{alphas[0][1]}/{seeds[0]}"])
    head = ["alpha"] + [name for _, name in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    names = {lab: lab.replace("_kl", " KL") for lab in ALPHA_MEMBERS}
    for a, lab in alphas:
        students = [runs[f"{lab}/{s}"]["models"]["student"] for s in seeds]
        cells = [
            _cell([m.get(k) for m in students], integer=(k == "modes_recovered")) for k, _ in cols
        ]
        name = f"{a:g} ({names[lab]})" if lab in names else f"{a:g}"
        lines.append("| " + " | ".join([name] + cells) + " |")
    return "\n".join(lines)


def _figure(**kwargs):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print("matplotlib is not installed: figures not written (pip install matplotlib)")
        return None
    return Figure(**kwargs)


def plot_samples(workdir: str, runs: dict, labels: Sequence[str], seed: int) -> str | None:
    """Target, teacher and one-step samples of every divergence side by side."""
    from fdiv.train.plotting import save_side_by_side

    d0 = os.path.join(workdir, f"{labels[0]}_seed{seed}", "samples")
    panels = [("teacher (Heun)", np.load(os.path.join(d0, "teacher.npy")))]
    for lab in labels:
        path = os.path.join(workdir, f"{lab}_seed{seed}", "samples", "student_latest.npy")
        panels.append((lab, np.load(path)))
    return save_side_by_side(
        panels, os.path.join(workdir, "samples.png"), title=f"one-step students, seed {seed}"
    )


def plot_alpha_sweep(
    path: str, runs: dict, alphas: Sequence[tuple[float, str]], seeds: Sequence[int]
) -> str | None:
    """Each metric against alpha (mean +- std over seeds), teacher and target floor lines."""
    alphas = sorted(alphas)
    first = runs[f"{alphas[0][1]}/{seeds[0]}"]
    cols = _columns(first)
    fig = _figure(figsize=(3.6 * len(cols), 3.3))
    if fig is None:
        return None
    axes = np.atleast_1d(fig.subplots(1, len(cols)))
    x = [a for a, _ in alphas]
    for ax, (key, name) in zip(axes, cols):
        vals = np.array(
            [[runs[f"{lab}/{s}"]["models"]["student"][key] for s in seeds] for _, lab in alphas],
            dtype=float,
        )
        ax.errorbar(
            x,
            vals.mean(1),
            yerr=vals.std(1) if len(seeds) > 1 else None,
            marker="o",
            capsize=3,
            label="one-step student",
        )
        for ref, style in (("teacher", "--"), ("target", ":")):
            m = first["models"].get(ref)
            if m and key in m:
                ax.axhline(
                    m[key],
                    ls=style,
                    color="0.4",
                    label="teacher (Heun)" if ref == "teacher" else "target floor",
                )
        for a, text in ((0.0, "reverse KL"), (1.0, "forward KL")):
            if a in x:
                ax.axvline(a, color="0.85", lw=3, zorder=0)
                ax.text(a, ax.get_ylim()[1], text, fontsize=7, ha="center", va="bottom")
        if key.startswith("energy_distance"):
            # From ~1e-3 (the floor) to ~0.5 (mode-dropping alphas), negative values included.
            ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_xlabel("alpha")
        ax.set_ylabel(name)
        ax.set_title(name, fontsize=10, pad=12)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    n = len(seeds)
    fig.suptitle(
        f"f-distill on {first.get('data')} over the alpha family ({n} seed{'s' if n > 1 else ''})",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main(argv):
    del argv
    from absl import flags

    config = flags.FLAGS.config
    divs = [d for d in flags.FLAGS.divergences.split(",") if d]
    if flags.FLAGS.alphas:
        named = divs if flags.FLAGS["divergences"].present else []
        divs = [f"alpha:{a}" for a in flags.FLAGS.alphas.split(",") if a] + named
    seeds = [int(s) for s in flags.FLAGS.seeds.split(",") if s]
    out = compare(config, flags.FLAGS.workdir, divs, seeds)
    print(out["table"], flush=True)


if __name__ == "__main__":
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "f-distill config file (configs/fdistill_*.py[:ARG]).", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "Output directory.")
    flags.DEFINE_string(
        "divergences",
        ",".join(DIVERGENCES),
        "Comma-separated divergences: NAME or NAME:VALUE (alpha:0.5).",
    )
    flags.DEFINE_string(
        "alphas", "", "Comma-separated alphas (with --divergences only where it is given)."
    )
    flags.DEFINE_string("seeds", "0", "Comma-separated distillation seeds.")
    flags.mark_flags_as_required(["config", "workdir"])
    logging.set_verbosity(logging.WARNING)
    app.run(main)
