"""The package layout's imports only run downhill, and no modules import each other in a circle.

Layers, bottom to top: data <- train, export <- judge <- eval <- prefs, rl <- recipes, bench.
judge (verdicts, records, the judges, the scorecard, calibration) sits below eval (the research
loop: the frozen ruler, generation, the experiment log), so prefs and rl reach a judge without
the research loop. A module may import from its own layer or any layer below, never above. Every import statement counts,
including the ones inside functions (a lazy import is still a dependency). Read with ast, so
the check needs none of the heavy dependencies installed.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"data": 0, "train": 1, "export": 1, "judge": 2, "eval": 3, "prefs": 4, "rl": 4, "recipes": 5,
          "bench": 5}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path = REPO) -> dict[str, Path]:
    return {module_name(p): p for top in LAYERS for p in sorted((root / top).rglob("*.py"))}


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every absolute import; `from a import b` also names a.b (b may be a
    submodule), which the cycle check resolves against the real module list."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
            out += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            raise AssertionError(f"{path.relative_to(REPO)}:{node.lineno}: relative import; "
                                 "the project uses absolute imports only")
    return out


def upward_imports(modules: dict[str, Path]) -> list[str]:
    found = []
    for name, path in modules.items():
        own = LAYERS[name.split(".")[0]]
        for line, target in imports_of(path):
            top = target.split(".")[0]
            if top in LAYERS and LAYERS[top] > own and target in modules | {top: None}:
                found.append(f"{path.relative_to(REPO)}:{line}: imports {target} "
                             f"(layer {top!r} is above {name.split('.')[0]!r})")
    return sorted(set(found))


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Edges between project modules. A package's own __init__ importing one of its submodules
    (a facade or a lazy factory) is containment, not a dependency, so it makes no edge."""
    graph = {}
    for name, path in modules.items():
        targets = {t for _, t in imports_of(path) if t in modules and t != name}
        graph[name] = {t for t in targets if not t.startswith(name + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1
        stack.append(root); on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]; counter[0] += 1
                    stack.append(nxt); on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        m = stack.pop(); on_stack.discard(m); comp.append(m)
                        if m == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
    return found


def test_every_top_level_package_has_a_layer():
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} | {"bench"}
    assert packages - {"tests", "notebooks", "scripts", "docs"} <= set(LAYERS), \
        f"give these packages a layer in tests/test_layers.py: {sorted(packages - set(LAYERS))}"


def test_no_module_imports_from_a_layer_above_its_own():
    bad = upward_imports(project_modules())
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(import_graph(project_modules()))
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


# ---- the checker itself catches what it should -------------------------------------------------
@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    monkeypatch.setattr(__import__(__name__), "REPO", tmp_path)
    for pkg in ("data", "train", "eval"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
    return tmp_path


def test_checker_names_file_and_line_of_an_upward_import(fake_repo):
    (fake_repo / "data" / "low.py").write_text("import json\n\ndef f():\n    from eval.top import x\n")
    (fake_repo / "eval" / "top.py").write_text("from data.low import f\nx = 1\n")
    bad = upward_imports(project_modules(fake_repo))
    assert bad == ["data/low.py:4: imports eval.top (layer 'eval' is above 'data')"]


def test_checker_finds_a_lazy_cycle_but_not_a_package_facade(fake_repo):
    (fake_repo / "data" / "a.py").write_text("from data.b import g\n")
    (fake_repo / "data" / "b.py").write_text("def g():\n    from data.a import h\n")
    (fake_repo / "train" / "__init__.py").write_text("from train.core import run\n")
    (fake_repo / "train" / "core.py").write_text("import train\nrun = 1\n")
    assert cycles(import_graph(project_modules(fake_repo))) == [["data.a", "data.b"]]
