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
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        "commit notebooks without outputs"
    # The kernel inherits this environment: quick mode, CPU, and the repository importable.
    monkeypatch.setenv("FDIV_QUICK", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("PYTHONPATH", REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": os.path.dirname(path)}})
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
