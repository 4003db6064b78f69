r"""Side-by-side comparison of f-distill divergences at the same seeds and budget.

Runs `experiments.fdistill` once per (divergence, seed) with everything else fixed (one
shared cached teacher), then writes to ``--workdir``:

- ``results.json``: every run's summary (teacher, generator at init, student metrics, times);
- ``table.md``: a Markdown table (mean +- std over seeds), teacher and initial generator
  rows first;
- ``samples.png``: one figure with the teacher's samples and every divergence's one-step
  samples (first seed) side by side.

Usage (toy ring, the six divergences of the f-distill paper, three seeds)::

    python -m benchmarks.fdistill_divergences --config=configs/fdistill_toy2d.py \
        --workdir=/tmp/fdiv/compare_ring8 --seeds=0,1,2
    python -m benchmarks.fdistill_divergences --config=configs/fdistill_digits.py \
        --workdir=/tmp/fdiv/compare_digits --divergences=reverse_kl,js,forward_kl

Config overrides work as for ``experiments.main`` (``--config.num_steps=...``).
"""

from __future__ import annotations

import copy
import json
import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

DIVERGENCES = ("reverse_kl", "softened_reverse_kl", "js", "squared_hellinger", "forward_kl",
               "jeffreys")
TOY_COLUMNS = (("modes_recovered", "modes"), ("precision", "precision"),
               ("weight_error", "weight error"), ("energy_distance", "energy distance"))
IMAGE_COLUMNS = (("frechet_distance", "Frechet distance"), ("precision", "precision"),
                 ("recall", "recall"))


def compare(config: Any, workdir: str, divergences: Sequence[str] = DIVERGENCES,
            seeds: Sequence[int] = (0,), print_fn: Optional[Callable[[str], None]] = None) -> dict:
    """Runs every (divergence, seed) and writes results.json, table.md and samples.png.

    Args:
      config: an f-distill config (``configs/fdistill_*.py``); its ``divergence`` and ``seed``
        are overridden per run.
      workdir: output directory; run ``<div>_seed<seed>`` lives in a subdirectory (re-running
        resumes / reuses finished runs).
      divergences: divergence names (each must have a weight h).
      seeds: seeds of the distillation (the teacher is shared).
      print_fn: progress sink for the runs (default print).

    Returns:
      ``{"runs": {"<div>/<seed>": summary}, "table": markdown}``.
    """
    from experiments import fdistill

    os.makedirs(workdir, exist_ok=True)
    runs = {}
    for div in divergences:
        for seed in seeds:
            c = copy.deepcopy(config)
            c.divergence = div
            c.seed = int(seed)
            run_dir = os.path.join(workdir, f"{div}_seed{seed}")
            (print_fn or print)(f"=== {div}, seed {seed} -> {run_dir}")
            runs[f"{div}/{seed}"] = fdistill.train_and_evaluate(c, run_dir, print_fn=print_fn)
    table = markdown_table(runs, divergences, seeds)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(runs, f, indent=1, default=str)
    with open(os.path.join(workdir, "table.md"), "w") as f:
        f.write(table + "\n")
    plot_samples(workdir, runs, divergences, seeds[0])
    return {"runs": runs, "table": table}


def _cell(values: list[float], integer: bool = False) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    fmt = (lambda v: f"{v:.1f}") if integer else (lambda v: f"{v:.4f}")
    if len(values) == 1:
        return f"{values[0]:.0f}" if integer else fmt(values[0])
    return f"{fmt(np.mean(values))} +- {fmt(np.std(values))}"


def markdown_table(runs: dict, divergences: Sequence[str], seeds: Sequence[int]) -> str:
    """Markdown table of the runs (mean +- std over seeds)."""
    first = runs[f"{divergences[0]}/{seeds[0]}"]
    toy = "modes_recovered" in first["student"]
    cols = TOY_COLUMNS if toy else IMAGE_COLUMNS
    if toy and "energy_distance_large" in first["student"]:
        n_large = first.get("config", {}).get("eval_ed_samples", "large")
        cols = cols + (("energy_distance_large", f"energy distance (n={n_large})"),)
    head = ["model", "network evaluations"] + [name for _, name in cols] + ["distill time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label, nfe, results, times):
        cells = [_cell([r.get(k) for r in results], integer=(k == "modes_recovered"))
                 for k, _ in cols]
        return "| " + " | ".join([label, str(nfe)] + cells + [times]) + " |"

    teacher = first["teacher"]
    if first.get("target"):
        lines.append(row("target (fresh draw: sampling-noise floor)", "-", [first["target"]],
                         "-"))
    lines.append(row("teacher (Heun)", teacher.get("num_evaluations", "-"), [teacher], "-"))
    lines.append(row("generator at init", 1, [first["generator_init"]], "-"))
    for div in divergences:
        rs = [runs[f"{div}/{s}"] for s in seeds]
        times = [r.get("distill_sec") for r in rs if r.get("distill_sec") is not None]
        times = f"{np.mean(times):.0f}" if times else "-"
        lines.append(row(f"{div} (one step)", 1, [r["student"] for r in rs], times))
    n = len(seeds)
    lines.append("")
    lines.append(f"{n} seed{'s' if n > 1 else ''} ({', '.join(map(str, seeds))}); "
                 f"data {first.get('data')}; same teacher, budget and evaluation samples.")
    return "\n".join(lines)


def plot_samples(workdir: str, runs: dict, divergences: Sequence[str], seed: int) -> str:
    """Teacher and one-step samples of every divergence side by side; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fdiv.train.plotting import image_grid

    panels = []
    d0 = os.path.join(workdir, f"{divergences[0]}_seed{seed}", "samples")
    panels.append(("teacher (Heun)", np.load(os.path.join(d0, "teacher.npy"))))
    for div in divergences:
        path = os.path.join(workdir, f"{div}_seed{seed}", "samples", "student_latest.npy")
        panels.append((div, np.load(path)))
    # Same axes for every panel, from the teacher's samples.
    lim = 1.1 * float(np.quantile(np.abs(panels[0][1]), 0.999))
    fig, axes = plt.subplots(1, len(panels), figsize=(2.6 * len(panels), 2.9))
    for ax, (title, x) in zip(np.atleast_1d(axes), panels):
        if x.ndim == 2:
            ax.scatter(x[:2000, 0], x[:2000, 1], s=1, alpha=0.5)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            grid = image_grid(np.clip(x[:36], -1, 1), ncols=6)
            ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1)
            ax.axis("off")
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    out = os.path.join(workdir, "samples.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv):
    del argv
    from absl import flags

    config = flags.FLAGS.config
    divs = [d for d in flags.FLAGS.divergences.split(",") if d]
    seeds = [int(s) for s in flags.FLAGS.seeds.split(",") if s]
    out = compare(config, flags.FLAGS.workdir, divs, seeds)
    print(out["table"], flush=True)


if __name__ == "__main__":
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "f-distill config file (configs/fdistill_*.py[:ARG]).",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Output directory.")
    flags.DEFINE_string("divergences", ",".join(DIVERGENCES), "Comma-separated divergence names.")
    flags.DEFINE_string("seeds", "0", "Comma-separated distillation seeds.")
    flags.mark_flags_as_required(["config", "workdir"])
    logging.set_verbosity(logging.WARNING)
    app.run(main)
