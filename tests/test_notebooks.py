"""Executes every notebooks/*.ipynb headlessly (FDIV_QUICK=1 shrinks their work) and checks that
every figure cell shows its figure."""

import glob
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))
CELL_TIMEOUT = 300
FIGURE_CALLS = ("plt.show()", "display(Image(")


def test_notebooks_are_discovered():
    assert any(p.endswith("quickstart.ipynb") for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[os.path.basename(p) for p in NOTEBOOKS])
def test_notebook_executes_and_shows_its_figures(path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    with open(path) as f:
        nb = nbformat.read(f, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "commit notebooks without outputs"
    )
    # The kernel inherits this environment: quick mode, CPU, and the repository importable.
    monkeypatch.setenv("FDIV_QUICK", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": os.path.dirname(path)}},
    )
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    # A figure cell must produce an image, also after an experiment ran in the same kernel
    # (a global matplotlib backend switch there made later figures vanish silently).
    figure_cells = [c for c in code if any(call in c.source for call in FIGURE_CALLS)]
    assert figure_cells
    for c in figure_cells:
        images = sum(1 for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
        want = sum(c.source.count(call) for call in FIGURE_CALLS)
        assert images >= want, f"figure cell shows {images} of {want} images:\n{c.source[:300]}"


def test_no_global_matplotlib_backend_switch():
    offenders = []
    for sub in ("fdiv", "experiments", "benchmarks", "configs"):
        for path in glob.glob(os.path.join(REPO, sub, "**", "*.py"), recursive=True):
            if "matplotlib.use(" in open(path).read():
                offenders.append(os.path.relpath(path, REPO))
    assert not offenders


def test_plots_without_matplotlib_are_one_warning(tmp_path, monkeypatch, caplog):
    import sys

    import numpy as np

    from fdiv.train import plotting

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails
    with caplog.at_level("WARNING", logger=plotting.__name__):
        out = plotting.save_scatter(np.zeros((3, 2)), str(tmp_path / "s.png"))
    assert out is None and not (tmp_path / "s.png").exists()
    assert len(caplog.records) == 1 and "matplotlib is not installed" in caplog.records[0].message


def test_side_by_side_and_curves_with_references(tmp_path):
    import json

    import numpy as np
    from PIL import Image

    from fdiv.train import plotting

    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in (10, 20):
            f.write(json.dumps({"step": step, "loss": 1.0 / step, "empty": None}) + "\n")
        f.write(json.dumps({"step": 20, "eval/energy_distance": 0.1}) + "\n")
    path = plotting.plot_curves(
        str(tmp_path), title="run x", references={"eval/energy_distance": {"teacher": 0.01}}
    )
    assert path and Image.open(path).size[0] > 0
    # Two panels (the all-None metric gets none): one row of two.
    w, h = Image.open(path).size
    assert w > h
    rng = np.random.default_rng(0)
    out = plotting.save_side_by_side(
        [("target", rng.normal(size=(50, 2))), ("student", rng.normal(size=(50, 2)))],
        str(tmp_path / "sbs.png"),
        title="t",
    )
    assert Image.open(out).size[0] > Image.open(out).size[1]
    imgs = plotting.save_side_by_side(
        [("a", rng.uniform(-1, 1, size=(4, 8, 8, 1)))], str(tmp_path / "img.png")
    )
    assert os.path.getsize(imgs) > 0
