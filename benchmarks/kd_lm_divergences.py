r"""kd_lm for several divergences and modes with the same seed and token budget, and the table.

Runs `experiments.kd_lm.train_and_evaluate` once per (mode, divergence) in
``<workdir>/<mode>_<divergence>`` (each resumes from its checkpoints; the offline teacher
cache is shared), then writes ``<workdir>/kd_lm_table.md``, ``kd_lm_results.json`` and a
labelled bar chart ``kd_lm_results.png``. Rows already finished are read back from their
``summary.json``, so an interrupted comparison continues where it stopped.

Usage::

    python -m benchmarks.kd_lm_divergences \
        --config=configs/kd_lm.py:cpu --workdir=runs/kd_lm \
        --divergences=forward_kl,reverse_kl,js,total_variation,skew_kl,skew_reverse_kl,gjsd \
        --modes=off_policy,on_policy
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import sys

COLUMNS = [
    ("heldout_ce", "held-out CE"),
    ("heldout_forward_kl", "KL(P||Q)"),
    ("heldout_reverse_kl", "KL(Q||P)"),
    ("teacher_loglik_per_token", "teacher log-lik"),
    ("distinct_1", "distinct-1"),
    ("distinct_2", "distinct-2"),
    ("distinct_3", "distinct-3"),
    ("student_train_tokens_per_sec", "student tok/s"),
    ("total_sec", "wall s"),
]
# The teacher's own row: its held-out CE, KL 0 to itself, the quality of its own samples.
TEACHER_ROW = {"heldout_forward_kl": 0.0, "heldout_reverse_kl": 0.0}


@contextlib.contextmanager
def _holding(lock_path: str | None):
    """The exclusive flock on `lock_path` for one run (nothing when None), so that other heavy
    jobs sharing the lock can run between the rows."""
    if not lock_path:
        yield
        return
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def run_all(
    config, workdir: str, divergences, modes, print_fn=print, lock_path=None, run=True
) -> list[dict]:
    """One row per (mode, divergence): finished rows are read back, others run (when `run`)."""
    import experiments

    rows = []
    # Divergence-major order: an interrupted comparison has both modes of its first rows.
    for div in divergences:
        for mode in modes:
            c = config.copy_and_resolve_references()
            c.divergence, c.mode = div, mode
            sub = os.path.join(workdir, f"{mode}_{div}")
            done = os.path.join(sub, "summary.json")
            summary = None
            if os.path.exists(done):
                with open(done) as f:
                    summary = json.load(f)
                if summary.get("num_steps") != c.num_steps or "heldout_ce" not in summary:
                    summary = None
            if summary is None and not run:
                continue
            if summary is None:
                with _holding(lock_path):
                    summary = experiments.run(c, sub)
            rows.append(summary)
            print_fn(
                f"{mode} {div}: "
                + ", ".join(f"{label} {_cell(summary.get(k), k)}" for k, label in COLUMNS)
            )
    return sorted(rows, key=lambda r: list(modes).index(r["mode"]))


# Rates and times in whole units; divergences and log-likelihoods to three decimals.
WHOLE_UNITS = ("student_train_tokens_per_sec", "total_sec")


def _cell(value, key: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.0f}" if key in WHOLE_UNITS or abs(value) >= 100 else f"{value:.3f}"


def table(rows: list[dict]) -> str:
    t = {**rows[0]["teacher"], **TEACHER_ROW}
    lines = [
        "| mode | divergence | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|---|---|" + "---:|" * len(COLUMNS),
        "| teacher | - | " + " | ".join(_cell(t.get(k), k) for k, _ in COLUMNS) + " |",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['divergence']} | "
            + " | ".join(_cell(r.get(k), k) for k, _ in COLUMNS)
            + " |"
        )
    lines.append("")
    lines.append(
        f"Teacher cache: {rows[0]['teacher_cache_sec']:.0f} s "
        f"({rows[0]['teacher_cache_tokens_per_sec']:.0f} tokens/s); student training "
        f"{rows[0]['student_train_tokens_per_sec']:.0f} tokens/s (off-policy row 1); "
        f"student {rows[0]['student_params']} parameters."
    )
    lines.append("")
    lines.append("Samples (prompt ||| continuation):")
    lines.append("")
    for r in [{"mode": "teacher", "divergence": "-", "samples": t["samples"]}] + rows:
        for s in r["samples"]:
            lines.append(f"- {r['mode']} {r['divergence']}: {json.dumps(s)}")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6))
    axes = fig.subplots(1, 3)
    labels = [f"{r['mode'].split('_')[0]}\n{r['divergence']}" for r in rows]
    for ax, (key, label) in zip(axes, COLUMNS[:2] + COLUMNS[3:4]):
        ax.bar(range(len(rows)), [r[key] for r in rows])
        if key == "heldout_ce":
            ax.axhline(rows[0]["teacher"]["heldout_ce"], color="k", ls="--", label="teacher")
            ax.legend()
        if key == "teacher_loglik_per_token":
            ax.axhline(rows[0]["teacher"][key], color="k", ls="--", label="teacher samples")
            ax.legend()
        ax.set_xticks(range(len(rows)), labels, fontsize=6, rotation=90)
        ax.set_title(label + " (nats/token)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/kd_lm.py:cpu")
    parser.add_argument("--workdir", default="runs/kd_lm")
    parser.add_argument(
        "--divergences",
        default="forward_kl,reverse_kl,js,total_variation,skew_kl,skew_reverse_kl,gjsd",
    )
    parser.add_argument("--modes", default="off_policy,on_policy")
    parser.add_argument(
        "--lock", default=None, help="hold an exclusive flock on this file during each run"
    )
    parser.add_argument(
        "--table_only", action="store_true", help="only tabulate the rows already finished"
    )
    args = parser.parse_args(argv)
    import experiments

    name, _, variant = args.config.partition(":")
    config = experiments.load_config(name, variant or None)
    rows = run_all(
        config,
        args.workdir,
        args.divergences.split(","),
        args.modes.split(","),
        lock_path=args.lock,
        run=not args.table_only,
    )
    if not rows:
        raise SystemExit(f"no finished rows in {args.workdir}")
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "kd_lm_results.json"), "w") as f:
        json.dump(rows, f, indent=1, default=str)
    md = table(rows)
    with open(os.path.join(args.workdir, "kd_lm_table.md"), "w") as f:
        f.write(md)
    plot(rows, os.path.join(args.workdir, "kd_lm_results.png"))
    print(md)


if __name__ == "__main__":
    main(sys.argv[1:])
