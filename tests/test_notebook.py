"""notebooks/inspect_pairs.ipynb runs top to bottom, unedited, on pairs from the tiny pipeline."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from data.contract import DiscoveryResult, Question
from data.corpus import reference_cases

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "notebooks" / "inspect_pairs.ipynb"


def weak_drafts(path: Path, n_tasks: int) -> None:
    """Two on-policy-style drafts per task: one failing the gate (6 questions), one with its
    last question replaced by filler (passes the gate, judged lower)."""
    rows = []
    for case in reference_cases()[:n_tasks]:
        g = case.gold
        six = DiscoveryResult(g.task_title, g.task_description, g.questions[:6])
        filler = DiscoveryResult(g.task_title, g.task_description, g.questions[:6] + (
            Question("Anything else?", "Just in case."),))
        rows += [{"input": case.input, "candidate": six.to_dict()},
                 {"input": case.input, "candidate": filler.to_dict()}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


@pytest.fixture(scope="module")
def tiny_pairs_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("nb-pairs")
    weak_drafts(tmp / "drafts.jsonl", 10)
    out = tmp / "pairs"
    proc = subprocess.run([sys.executable, "-m", "prefs.build", "--limit", "10", "--out", str(out),
                           "--drafts", str(tmp / "drafts.jsonl"), "--val-fraction", "0.2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def test_notebook_runs_on_tiny_pairs(tiny_pairs_dir, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    # A kernelspec for *this* interpreter in a private folder: no `ipykernel install` needed,
    # and a user-level "python3" kernel pointing elsewhere cannot be picked up instead.
    kdir = tmp_path / "jupyter" / "kernels" / "fmdistill-test"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fmdistill test", "language": "python"}), encoding="utf-8")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("FMDISTILL_PAIRS_DIR", str(tiny_pairs_dir))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, kernel_name="fmdistill-test", timeout=180,
                   resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()

    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")
    assert f"pairs from {tiny_pairs_dir}" in text           # it read the env var, not a default
    n_pairs = sum(1 for line in open(tiny_pairs_dir / "pairs.jsonl") if line.strip())
    assert f"{n_pairs} pairs over" in text
    html = "\n".join(o["data"].get("text/html", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if "data" in o)
    assert "chosen: " in html and "rejected: " in html       # the side-by-side tables rendered
    images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
                 for o in c.get("outputs", []))
    assert images >= 2                                       # margin + per-dimension plots
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors


def test_pairs_include_every_rejection_kind(tiny_pairs_dir):
    kinds = {json.loads(line)["kind"] for line in open(tiny_pairs_dir / "pairs.sidecar.jsonl")}
    assert kinds == {"drop-critical", "compound", "redundant", "on-policy"}
