"""PNG plots for runs: training curves, image sample grids, 2-D scatter plots, side by side.

Every figure is a `matplotlib.figure.Figure` created here and drawn with the object API, then
saved: the global pyplot state and backend are never touched, so plots written while an
experiment runs in a Jupyter kernel do not change how the notebook's own figures display
(`matplotlib.use` would). matplotlib is optional (the ``plots`` extra): without it each
function logs one warning line and returns None.

- `plot_curves(workdir, title=..., references=...)` -> ``<workdir>/curves.png`` from
  ``metrics.jsonl``: one panel per metric (training and ``eval/`` values of the same name
  share a panel), reference values (e.g. the teacher's, the target floor) as horizontal lines.
- `save_image_grid(images, path)`: images ``[N, H, W, C]`` (C in {1, 3}) in [-1, 1] (or
  [0, 1] with ``value_range=(0, 1)``) tiled into one PNG.
- `save_scatter(points, path, reference=...)`: 2-D samples over an optional reference set.
- `save_side_by_side(panels, path)`: several models' samples (2-D points or images) in one
  row, e.g. target, teacher, student.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

try:
    from fdiv.train.writers import TIMING_KEYS, read_metrics
except ImportError:
    from fdiv.train.metrics import TIMING_KEYS, read_metrics

log = logging.getLogger(__name__)


def _new_figure(what: str, **kwargs):
    """A fresh `Figure` (not registered with pyplot), or None when matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed: %s not written (pip install matplotlib)", what)
        return None
    return Figure(**kwargs)


def _save(fig, path: str, **kwargs) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, **kwargs)
    return path


def readable(name: str) -> str:
    """``eval/energy_distance`` -> ``energy distance``."""
    return name.split("/", 1)[-1].replace("_", " ")


def plot_curves(
    workdir: str,
    path: str | None = None,
    *,
    title: str | None = None,
    references: Mapping[str, Mapping[str, float]] | None = None,
    keys: Sequence[str] | None = None,
    log_y: Sequence[str] = (),
) -> str | None:
    """Plots every metric in ``<workdir>/metrics.jsonl`` against the step.

    Args:
      workdir: run directory.
      path: output PNG (default ``<workdir>/curves.png``).
      title: figure title (default: the workdir's name).
      references: metric name (``eval/energy_distance`` or ``energy_distance``) -> {label:
        value}, drawn as labelled horizontal lines in that metric's panel (e.g. ``{"teacher":
        0.0001, "target floor": 0.0001}``).
      keys: metric names to plot (default: all but timing fields); ``eval/NAME`` is drawn in
        the panel of ``NAME`` when both exist.
      log_y: metric names whose panel uses a log-scale y axis.

    Returns:
      The PNG path, or None when there is nothing to plot (or no matplotlib).
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
    panels: dict[str, list[tuple[str, list]]] = {}
    for k in names:
        pts = [
            (r["step"], r[k])
            for r in records
            if r.get(k) is not None and math.isfinite(float(r[k]))
        ]
        if pts:  # no empty panels
            base = k.split("/", 1)[1] if k.startswith("eval/") else k
            panels.setdefault(base, []).append((k, pts))
    if not panels:
        return None
    refs = {k.split("/", 1)[-1]: v for k, v in (references or {}).items()}
    n = len(panels)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig = _new_figure(path, figsize=(4.2 * cols, 3.0 * rows + 0.5))
    if fig is None:
        return None
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, (base, series) in zip(axes.flat, panels.items()):
        for k, pts in series:
            s, v = zip(*pts)
            kind = "evaluation" if k.startswith("eval/") else "training"
            ax.plot(s, v, marker="o" if len(pts) < 30 else None, ms=3, label=kind)
        for i, (label, value) in enumerate((refs.get(base) or {}).items()):
            if value is not None and math.isfinite(float(value)):
                ax.axhline(
                    float(value),
                    color=f"C{i + 2}",
                    ls="--",
                    lw=1,
                    label=f"{label} ({float(value):.3g})",
                )
        ax.set_title(readable(base), fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(readable(base))
        if base in log_y:
            ax.set_yscale("log")
        if len(series) > 1 or refs.get(base):
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        fig.delaxes(ax)
    fig.suptitle(title or os.path.basename(os.path.abspath(workdir)), fontsize=11)
    fig.tight_layout()
    return _save(fig, path, dpi=100)


def image_grid(
    images: Any,
    *,
    ncols: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    pad: int = 1,
) -> np.ndarray:
    """Tiles ``[N, H, W, C]`` images into one ``[rows*(H+pad)+pad, cols*(W+pad)+pad, C]`` array in [0, 1].

    Raises:
      ValueError: if `images` is not 4-D with 1 or 3 channels.
    """
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(
            f"image_grid: images must have shape [N, H, W, C] with C in (1, 3), got {x.shape}."
        )
    lo, hi = value_range
    x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    n, h, w, c = x.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32)
    for i in range(n):
        r, q = divmod(i, ncols)
        grid[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + q * (w + pad) : pad + q * (w + pad) + w,
        ] = x[i]
    return grid


def _show_grid(ax, grid: np.ndarray) -> None:
    ax.imshow(
        grid[..., 0] if grid.shape[-1] == 1 else grid,
        cmap="gray" if grid.shape[-1] == 1 else None,
        vmin=0.0,
        vmax=1.0,
        interpolation="nearest",
    )
    ax.axis("off")


def save_image_grid(
    images: Any,
    path: str,
    *,
    ncols: int | None = None,
    value_range: tuple[float, float] = (-1.0, 1.0),
    title: str | None = None,
) -> str | None:
    """Saves ``[N, H, W, C]`` images as one tiled PNG at `path`; returns `path`."""
    grid = image_grid(images, ncols=ncols, value_range=value_range)
    scale = max(2.0, min(10.0, grid.shape[1] / 40))
    fig = _new_figure(
        path, figsize=(scale, scale * grid.shape[0] / grid.shape[1] + (0.3 if title else 0))
    )
    if fig is None:
        return None
    ax = fig.subplots()
    _show_grid(ax, grid)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path, dpi=100, bbox_inches="tight")


def _check_points(name: str, a: Any) -> np.ndarray:
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != 2:
        raise ValueError(f"{name} must have shape [N, 2], got {a.shape}.")
    return a


def save_scatter(
    points: Any,
    path: str,
    *,
    reference: Any = None,
    centres: Any = None,
    title: str | None = None,
    lim: float | None = None,
    label: str = "samples",
    reference_label: str = "target",
) -> str | None:
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
    pts = _check_points("save_scatter: points", points)
    ref = None if reference is None else _check_points("save_scatter: reference", reference)
    c = None if centres is None else _check_points("save_scatter: centres", centres)
    fig = _new_figure(path, figsize=(4.5, 4.5))
    if fig is None:
        return None
    ax = fig.subplots()
    if ref is not None:
        ax.scatter(
            ref[:, 0], ref[:, 1], s=2, c="0.7", alpha=0.5, label=reference_label, rasterized=True
        )
    ax.scatter(pts[:, 0], pts[:, 1], s=2, c="C0", alpha=0.6, label=label, rasterized=True)
    if c is not None:
        ax.scatter(c[:, 0], c[:, 1], marker="x", c="C3", s=30, label="modes")
    if lim is None:
        allpts = pts if ref is None else np.concatenate([pts, ref])
        finite = allpts[np.all(np.isfinite(allpts), axis=1)]
        lim = float(np.percentile(np.abs(finite), 99.5)) * 1.15 if len(finite) else 1.0
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=7, markerscale=3)
    if title:
        ax.set_title(title, fontsize=9)
    return _save(fig, path, dpi=100, bbox_inches="tight")


def save_side_by_side(
    panels: Sequence[tuple[str, Any]],
    path: str,
    *,
    title: str | None = None,
    centres: Any = None,
    lim: float | None = None,
    max_points: int = 2000,
    max_images: int = 36,
) -> str | None:
    """Several sample sets side by side in one PNG (e.g. target, teacher, student).

    Args:
      panels: ``(label, samples)`` pairs; samples are 2-D points ``[N, 2]`` (scatter, same
        axes for all panels) or images ``[N, H, W, C]`` in [-1, 1] (a grid).
      path: output PNG.
      title: figure title.
      centres: mode centres ``[K, 2]`` drawn as crosses on 2-D panels.
      lim: symmetric axis limit of 2-D panels (default: from the first panel).
      max_points, max_images: samples drawn per panel.
    """
    if not panels:
        raise ValueError("save_side_by_side: panels is empty; pass (label, samples) pairs.")
    arrays = [(label, np.asarray(x, np.float32)) for label, x in panels]
    points = arrays[0][1].ndim == 2
    if points and lim is None:
        first = arrays[0][1]
        lim = 1.1 * float(np.quantile(np.abs(first[np.all(np.isfinite(first), 1)]), 0.999))
    fig = _new_figure(path, figsize=(2.8 * len(arrays), 3.1 + (0.3 if title else 0)))
    if fig is None:
        return None
    axes = np.atleast_1d(fig.subplots(1, len(arrays)))
    for ax, (label, x) in zip(axes, arrays):
        if x.ndim == 2:
            x = _check_points(f"save_side_by_side: {label}", x)
            ax.scatter(x[:max_points, 0], x[:max_points, 1], s=1, alpha=0.5, rasterized=True)
            if centres is not None:
                c = np.asarray(centres)
                ax.scatter(c[:, 0], c[:, 1], marker="x", c="C3", s=25)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            _show_grid(ax, image_grid(np.clip(x[:max_images], -1, 1), ncols=6))
        ax.set_title(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi=110)
