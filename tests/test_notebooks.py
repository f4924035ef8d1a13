"""The notebooks run headless against a small generated demo database, draw their charts, and are
committed without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
SMALL_DEMO = {
    "CHATDB_DEMO_USERS": "4",
    "CHATDB_DEMO_CHATS": "30",
    "CHATDB_DEMO_MESSAGES": "1200",
    "CHATDB_DEMO_DAYS": "40",
    "MPLBACKEND": "Agg",
}


def test_the_notebooks_exist() -> None:
    assert {p.name for p in NOTEBOOKS} >= {"usage_analytics.ipynb", "export_to_parquet.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebooks_carry_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    for index, cell in enumerate(notebook.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"cell {index} has outputs: strip them"
            )


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_headless_and_draws_its_charts(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nbclient import NotebookClient

    for name, value in SMALL_DEMO.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("CHATDB_URL", raising=False)  # always the generated demo database
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    notebook = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    # "python3" is the kernel of the running interpreter (ipykernel from the dev extra): no
    # kernelspec has to be installed. Any cell error raises CellExecutionError and fails the test.
    client = NotebookClient(
        notebook, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute(env=dict(os.environ))
    images = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "image/png" in output.get("data", {})
    ]
    charts = sum("plots." in cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert charts and len(images) >= charts, f"{len(images)} images for {charts} chart cells"
    # ... and leaves nothing in the temp folder (a demo database is about 12 MB a run).
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith("chatdb-")]
