"""The layers hold: every module's imports (at module level and inside functions alike) go down
the layers drawn in docs/design.md, there is no import cycle, no package's re-exported name
shadows one of its modules, and `import pyrovae` leaves matplotlib alone."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyrovae"
#: bottom to top: a module may import its own layer's modules (without a cycle) and those below
LAYERS = [
    ("leaves", {"pyrovae.errors", "pyrovae.registry", "pyrovae.devices", "pyrovae.rng", "pyrovae.safe_load",
                "pyrovae.progress", "pyrovae.version"}),
    ("data", {"pyrovae.data"}),
    ("parts", {"pyrovae.parts"}),
    ("models", {"pyrovae.models"}),
    ("infer", {"pyrovae.infer"}),
    ("training", {"pyrovae.training"}),
    ("app", {"pyrovae.app"}),
    ("front", {"pyrovae", "pyrovae.__main__", "pyrovae.lightning"}),
]


def module_name(path: Path) -> str:
    return ".".join(path.with_suffix("").relative_to(ROOT).parts).removesuffix(".__init__")


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    for rank, (_, members) in enumerate(LAYERS):
        if module in members:
            return rank
    for rank, (_, members) in enumerate(LAYERS):
        if any(module.startswith(m + ".") for m in members if m != "pyrovae"):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS (and to docs/design.md)")


def imports_of(name: str, path: Path):
    """Every pyrovae module ``name`` imports, anywhere in the file (function bodies included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "pyrovae" or target.startswith("pyrovae."):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name == "pyrovae" or a.name.startswith("pyrovae."))
    found.discard(name)
    return found


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_down_the_layers(module):
    mine = layer_of(module)
    up = sorted(dep for dep in GRAPH[module] if layer_of(dep) > mine)
    assert not up, f"{module} ({LAYERS[mine][0]}) imports from a layer above: {up}"
    if module not in ("pyrovae", "pyrovae.__main__"):
        assert "pyrovae" not in GRAPH[module], f"{module} imports the front package; import the module itself"


def test_no_import_cycle():
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for dep in sorted(GRAPH.get(module, ())):
            if dep.startswith("pyrovae") and dep in GRAPH:
                if state.get(dep) == "open":
                    cycle = stack[stack.index(dep):] + [dep]
                    raise AssertionError("import cycle: " + " -> ".join(cycle))
                if dep not in state:
                    visit(dep)
        stack.pop()
        state[module] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_layers_checked_are_real():
    """The checks above would pass on an empty graph: make sure they see the imports."""
    assert "pyrovae.models.terms" in GRAPH["pyrovae.models.base"]
    assert "pyrovae.training.loop" in GRAPH["pyrovae.app.run"]
    assert layer_of("pyrovae.app.cli") > layer_of("pyrovae.training.loop") > layer_of("pyrovae.infer.estimators")
    with pytest.raises(AssertionError):
        layer_of("pyrovae.somewhere_new")


def test_no_module_is_shadowed_by_a_name():
    """``pyrovae.X.Y`` is the module Y wherever Y is a module: no package re-exports a name over it."""
    modules = {name: path for name, path in MODULES.items() if name != "pyrovae.__main__"}  # that one runs the CLI
    for name in modules:
        importlib.import_module(name)
    for name, path in modules.items():
        if path.name != "__init__.py":
            parent, leaf = name.rsplit(".", 1)
            assert getattr(sys.modules[parent], leaf) is sys.modules[name], \
                f"{parent}.{leaf} is {getattr(sys.modules[parent], leaf)!r}, not the module {name}"


def test_import_pyrovae_leaves_matplotlib_alone():
    code = "import sys, pyrovae; print(any(m.startswith('matplotlib') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
