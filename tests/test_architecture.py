"""Structure rules of the package, checked on its source: the Ultralytics seam, no cycles, short functions."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "yw_ext"
MAX_FUNCTION_LINES = 80
MAX_ULTRALYTICS_IMPORTERS = 8
ULTRALYTICS_FREE = ("yw_ext.core", "yw_ext.text", "yw_ext.runtime", "yw_ext.checkpoints", "yw_ext.hub", "yw_ext.vocab")


def _modules() -> dict[str, Path]:
    out = {}
    for p in sorted(PKG.rglob("*.py")):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = p
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports, anywhere in the file (static)."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


MODULES = _modules()
IMPORTS = {m: _imports(m, p) for m, p in MODULES.items()}


def _code_lines(node: ast.AST) -> int:
    n = node.end_lineno - node.lineno + 1
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            n -= body[0].end_lineno - body[0].lineno + 1
    return n


def test_no_long_functions():
    long = []
    for m, p in MODULES.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _code_lines(node) > MAX_FUNCTION_LINES:
                long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name} ({_code_lines(node)} lines)")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines of code: {long}"


def test_ultralytics_behind_the_seam():
    importers = sorted(m for m, imps in IMPORTS.items() if any(i.split(".")[0] == "ultralytics" for i in imps))
    assert len(importers) <= MAX_ULTRALYTICS_IMPORTERS, importers
    assert "yw_ext.seam" in importers
    bad = [m for m in importers if m.startswith(ULTRALYTICS_FREE)]
    assert not bad, f"these modules must reach Ultralytics only through yw_ext.seam: {bad}"


def test_torch_free_layers_do_not_import_the_seam_at_import_time():
    """core never imports torch, the seam or Ultralytics; the vocabulary never the seam (torch only lazily)."""
    for m in MODULES:
        if m.startswith("yw_ext.core"):
            assert not any(i.split(".")[0] in {"torch", "ultralytics"} or i == "yw_ext.seam" for i in IMPORTS[m]), m
        if m == "yw_ext.vocab":
            assert not any(i.split(".")[0] == "ultralytics" or i == "yw_ext.seam" for i in IMPORTS[m]), m


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = {m: {i for i in imps if i in MODULES and i != m} for m, imps in IMPORTS.items()}
    # a package's __init__ re-exporting its children is not a cycle between concepts
    real = [c for c in _cycles(graph) if not all(x.startswith(min(c, key=len)) for x in c)]
    assert not real, f"import cycles: {real}"


def test_private_ultralytics_apis_exist():
    """Every private Ultralytics API yw_ext depends on is listed in the seam and still there, named when missing."""
    from yw_ext import seam

    assert seam.PRIVATE_APIS, "the seam lists no private API"
    missing = seam.missing_private_apis()
    assert not missing, (f"Ultralytics {seam.ULTRALYTICS_VERSION} lacks private APIs yw_ext calls (checked against "
                         f"{seam.CHECKED_AGAINST}): {missing}; update yw_ext/seam.py")


def test_missing_private_api_is_named(monkeypatch):
    from yw_ext import seam

    monkeypatch.setitem(seam.PRIVATE_APIS, "ultralytics.nn.modules.head:Detect._no_such_method", "test")
    assert seam.missing_private_apis() == ["ultralytics.nn.modules.head:Detect._no_such_method"]
    with pytest.raises(AttributeError, match="Detect._no_such_method"):
        seam.resolve("ultralytics.nn.modules.head:Detect._no_such_method")


def test_private_api_calls_only_in_the_seam():
    """The private names of PRIVATE_APIS are called (``x._name(``) nowhere else in the package."""
    from yw_ext import seam

    private = {s.rsplit(".", 1)[-1].rsplit(":", 1)[-1] for s in seam.PRIVATE_APIS}
    private = {p for p in private if p.startswith("_")}
    hits = []
    for m, p in MODULES.items():
        if m == "yw_ext.seam":
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in private:
                if not (isinstance(node.func.value, ast.Call) and getattr(node.func.value.func, "id", "") == "super"):
                    hits.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.func.attr}")
    assert not hits, f"private Ultralytics APIs called outside yw_ext/seam.py: {hits}"


_LAZY = r"""
import sys, time
t = time.perf_counter()
import yw_ext, yw_ext.core, yw_ext.vocab
from yw_ext.core import parse_classes
from yw_ext.vocab import Vocabulary
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "ultralytics"})
print(heavy, round(time.perf_counter() - t, 3))
"""


def test_core_and_vocabulary_import_without_torch():
    """``import yw_ext`` + core + the Vocabulary load neither torch nor Ultralytics (both are installed here)."""
    p = subprocess.run([sys.executable, "-c", _LAZY], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    heavy = p.stdout.split("]")[0] + "]"
    assert heavy == "[]", p.stdout
