"""notebooks/probe.ipynb runs top to bottom on a CPU against a tiny checkpoint."""

import os

import nbformat
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient
from test_probe_checkpoint import fresh_copy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "probe.ipynb")


def ensure_python3_kernel(tmp_path, monkeypatch) -> None:
    """Registers this interpreter as the `python3` kernel when no such kernel is installed."""
    if "python3" in KernelSpecManager().find_kernel_specs():
        return
    from ipykernel import kernelspec  # noqa: PLC0415

    prefix = str(tmp_path / "jupyter")
    kernelspec.install(kernel_name="python3", prefix=prefix)
    path = os.path.join(prefix, "share", "jupyter")
    monkeypatch.setenv("JUPYTER_PATH", os.pathsep.join([path, os.environ.get("JUPYTER_PATH", "")]))


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
    ensure_python3_kernel(tmp_path, monkeypatch)
    workdir = fresh_copy(tmp_path)
    monkeypatch.setenv("VRL_WORKDIR", workdir)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("JAX_NUM_CPU_DEVICES", "2")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": ROOT}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on any error

    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert f"step 2 of {workdir}: videomae objective, vit encoder" in text
    for row in ("knn      motion       pretrained", "linear   appearance   random"):
        assert row in text
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    # Confusion matrix, per-class accuracy, two PCA plots, the nearest-neighbour grid.
    assert len(images) == 5
