"""PNG plots for runs: training curves, image sample grids, 2-D scatter plots.

matplotlib is imported lazily with the non-interactive Agg backend, so these helpers work on
headless machines and never open windows; they are only needed when called (matplotlib is
in the ``plots`` extra).

- `plot_curves(workdir)` -> ``<workdir>/curves.png`` from ``metrics.jsonl``: one panel per
  metric (training and ``eval/`` metrics of the same name share a panel).
- `save_image_grid(images, path)`: images ``[N, H, W, C]`` (C in {1, 3}) in [-1, 1] (or
  [0, 1] with ``value_range=(0, 1)``) tiled into one PNG.
- `save_scatter(points, path, reference=...)`: 2-D samples over an optional reference set.
"""

from __future__ import annotations

import math
import os
from typing import Any, Sequence

import numpy as np

from fdiv.train.metrics import TIMING_KEYS, read_metrics


def _pyplot():
    import matplotlib

    if matplotlib.get_backend().lower() != "agg":
        matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_curves(workdir: str, path: str | None = None, *, keys: Sequence[str] | None = None,
                log_y: Sequence[str] = ()) -> str | None:
    """Plots every metric in ``<workdir>/metrics.jsonl`` against the step.

    Args:
      workdir: run directory.
      path: output PNG (default ``<workdir>/curves.png``).
      keys: metric names to plot (default: all but timing fields); ``eval/NAME`` is drawn in
        the panel of ``NAME`` when both exist.
      log_y: metric names whose panel uses a log-scale y axis.

    Returns:
      The PNG path, or None when there are no metrics yet.
    """
    records = read_metrics(workdir)
    if not records:
        return None
    path = path or os.path.join(workdir, "curves.png")
    names: list[str] = []
    for r in records:
        for k in r:
            if k != "step" and k not in TIMING_KEYS and k not in names:
                names.append(k)
    if keys is not None:
        names = [k for k in names if k in keys or k.split("/", 1)[-1] in keys]
    panels: dict[str, list[str]] = {}
    for k in names:
        base = k.split("/", 1)[1] if k.startswith("eval/") else k
        panels.setdefault(base, []).append(k)
    if not panels:
        return None
    plt = _pyplot()
    n = len(panels)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (base, ks) in zip(axes.flat, panels.items()):
        for k in ks:
            pts = [(r["step"], r[k]) for r in records if k in r and r[k] is not None]
            if pts:
                s, v = zip(*pts)
                ax.plot(s, v, marker="o" if len(pts) < 30 else None, ms=3, label=k)
        ax.set_title(base)
        ax.set_xlabel("step")
        if base in log_y:
            ax.set_yscale("log")
        if len(ks) > 1:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def image_grid(images: Any, *, ncols: int | None = None, value_range: tuple[float, float] = (-1.0, 1.0),
               pad: int = 1) -> np.ndarray:
    """Tiles ``[N, H, W, C]`` images into one ``[rows*(H+pad)+pad, cols*(W+pad)+pad, C]`` array in [0, 1].

    Raises:
      ValueError: if `images` is not 4-D with 1 or 3 channels.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"image_grid: images must have shape [N, H, W, C] with C in (1, 3), got {x.shape}.")
    lo, hi = value_range
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    n, h, w, c = x.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, q = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = x[i]
    return grid


def save_image_grid(images: Any, path: str, *, ncols: int | None = None,
                    value_range: tuple[float, float] = (-1.0, 1.0), title: str | None = None) -> str:
    """Saves ``[N, H, W, C]`` images as one tiled PNG at `path`; returns `path`."""
    grid = image_grid(images, ncols=ncols, value_range=value_range)
    plt = _pyplot()
    scale = max(2.0, min(10.0, grid.shape[1] / 40))
    fig, ax = plt.subplots(figsize=(scale, scale * grid.shape[0] / grid.shape[1] + (0.3 if title else 0)))
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray" if grid.shape[-1] == 1 else None,
              vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def save_scatter(points: Any, path: str, *, reference: Any = None, centres: Any = None,
                 title: str | None = None, lim: float | None = None, label: str = "samples",
                 reference_label: str = "target") -> str:
    """Scatter plot of 2-D `points` ``[N, 2]`` over optional `reference` ``[M, 2]`` and mode `centres`.

    Args:
      points: samples to show, shape [N, 2].
      path: output PNG.
      reference: e.g. target samples, drawn underneath in grey.
      centres: mode centres [K, 2], drawn as crosses.
      title: figure title.
      lim: symmetric axis limit; default from the data.

    Raises:
      ValueError: if `points` (or `reference`, `centres`) is not of shape [N, 2].
    """
    def check(name, a):
        a = np.asarray(a, dtype=np.float32)
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"save_scatter: {name} must have shape [N, 2], got {a.shape}.")
        return a

    pts = check("points", points)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if reference is not None:
        ref = check("reference", reference)
        ax.scatter(ref[:, 0], ref[:, 1], s=2, c="0.7", alpha=0.5, label=reference_label, rasterized=True)
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="C0", alpha=0.6, label=label, rasterized=True)
    if centres is not None:
        c = check("centres", centres)
        ax.scatter(c[:, 0], c[:, 1], marker="x", c="C3", s=30, label="modes")
    if lim is None:
        allpts = pts if reference is None else np.concatenate([pts, ref])
        finite = allpts[np.all(np.isfinite(allpts), axis=1)]
        lim = float(np.percentile(np.abs(finite), 99.5)) * 1.15 if len(finite) else 1.0
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    if title:
        ax.set_title(title, fontsize=9)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path
