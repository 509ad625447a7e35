"""The package's architecture, held by a test: imports point one way and never form a cycle.

Layers, top to bottom (a module may import its own layer and the layers below it):

    cli                      the command line (nothing imports it)
    serve, tools             the REST server; probe, scikit-learn wrapper, export formats
    engine                   trainer, evaluation, checkpoints, distributed, run loading
    families                 the family contract and the families
    nn, data, envs, metrics, viz
    core                     errors, schema, registry, recipe, files, bundles, devices

The root package `genlab` holds only __version__ and lazy wrappers of the public functions,
so any module may `import genlab` for the version.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "genlab"

LAYERS = {
    "core": 0,
    "nn": 1, "data": 1, "envs": 1, "metrics": 1, "viz": 1,
    "families": 2,
    "engine": 3,
    "tools": 4, "serve": 4,
    "cli": 5, "__main__": 5,
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The genlab module an imported name refers to (a function of a module -> the module)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported genlab module, line, at module level?) for every import in the file."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(n) for n in tree.body}
    # imports under `if TYPE_CHECKING:` or try/except at the top are still module level
    for n in tree.body:
        if isinstance(n, (ast.If, ast.Try)):
            top_level |= {id(m) for m in ast.walk(n)}
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            names = [f"{base}.{a.name}" for a in node.names] if base.startswith("genlab") else []
            if not names:
                names = [base]
        for n in names:
            if n == "genlab" or n.startswith("genlab."):
                out.append((_resolve(n), node.lineno, id(node) in top_level))
    return out


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_every_module_belongs_to_a_layer():
    loose = [m for m in MODULES if m != "genlab" and _layer(m) is None]
    assert not loose, f"modules outside the layered packages: {loose}"


def test_imports_never_point_up():
    bad = []
    for me, path in MODULES.items():
        if me == "genlab":  # the root's lazy public wrappers reach down into the layers
            continue
        mine = _layer(me)
        for target, line, _ in _imports(path):
            theirs = _layer(target)
            if theirs is not None and theirs > mine:
                bad.append(f"{path.relative_to(PKG.parent)}:{line} imports {target} (layer {theirs} "
                           f"> {mine})")
    assert not bad, "imports that point up:\n" + "\n".join(bad)


def test_root_package_imports_nothing_at_module_level():
    assert not [t for t, _, top in _imports(MODULES["genlab"]) if top]


def test_no_import_cycles_at_module_level():
    graph = {m: sorted({t for t, _, top in _imports(p) if top and t != m and t != "genlab"})
             for m, p in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in graph.get(m, []):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in graph:
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_checker_sees_an_upward_import(tmp_path):
    """The rules above are not vacuous: a families module importing the engine is caught."""
    fake = PKG / "families" / "base.py"
    found = [t for t, _, _ in _imports(fake)]
    assert found and all(_layer(t) is not None for t in found)
    src = tmp_path / "x.py"
    src.write_text("from genlab.engine.trainer import Trainer\n")
    [(target, _, top)] = [(t, ln, tp) for t, ln, tp in _imports_of_source(src)]
    assert target == "genlab.engine.trainer" and top and _layer(target) > _layer("genlab.families.x")


def _imports_of_source(path: Path):
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module.startswith("genlab"):
            yield _resolve(node.module), node.lineno, True


def test_every_module_imports_on_its_own():
    """Each module in a fresh genlab state (all genlab modules dropped from sys.modules before
    each import), so a module that only works after some other import fails here."""
    code = (
        "import importlib, sys, traceback\n"
        "bad = []\n"
        f"for m in {sorted(set(MODULES) - {'genlab.__main__'})!r}:  # __main__ runs the CLI\n"
        "    for k in [k for k in sys.modules if k == 'genlab' or k.startswith('genlab.')]:\n"
        "        del sys.modules[k]\n"
        "    try:\n"
        "        importlib.import_module(m)\n"
        "    except Exception as e:\n"
        "        bad.append(f'{m}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(bad))\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
