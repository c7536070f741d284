"""The layers hold: core modules (models, parts, estimators, algorithms, data, evaluation) never
import the application layer at module level, and `import pyrovae` leaves matplotlib alone."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pyrovae"
APP = {"pyrovae.config", "pyrovae.cli", "pyrovae.checkpoint", "pyrovae.plots", "pyrovae.train", "pyrovae.plugins",
       "pyrovae.runfolder"}
CORE = ["pyrovae.models.base", "pyrovae.models.vae", "pyrovae.models.registry", "pyrovae.estimators",
        "pyrovae.algorithms", "pyrovae.data", "pyrovae.priors", "pyrovae.likelihoods", "pyrovae.nets",
        "pyrovae.optim", "pyrovae.objectives", "pyrovae.evaluate", "pyrovae.mcem", "pyrovae.wake_sleep",
        "pyrovae.state", "pyrovae.distributed", "pyrovae.memory", "pyrovae.safe_load"]


def module_imports():
    """Each module's module-level imports of pyrovae modules (relative imports resolved)."""
    names = {".".join(p.with_suffix("").relative_to(ROOT).parts).removesuffix(".__init__"): p
             for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(parts + ([node.module] if node.module else []))
                deps.add(target)
                deps.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in names)
        graph[name] = deps
    return graph


def test_core_modules_never_import_the_application_layer():
    graph = module_imports()

    def reach(module, seen):
        for dep in graph.get(module, ()):
            if dep not in seen and dep != "pyrovae":
                seen.add(dep)
                reach(dep, seen)
        return seen

    for module in CORE:
        assert not reach(module, set()) & APP, (module, sorted(reach(module, set()) & APP))


def test_import_pyrovae_leaves_matplotlib_alone():
    code = "import sys, pyrovae; print(any(m.startswith('matplotlib') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr[-2000:]
