"""The layout's rules, checked on the source: one-way dependencies, no import cycles, small modules, one root
exception. (No build-machine path in what ships: tests/unit/test_integrity.py.)"""

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bricks", "index", "policies", "orchestrator")
LAYER = {"bricks": 0, "index": 1, "policies": 2, "orchestrator": 3}  # a package imports only lower layers


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """First-party modules `name` imports anywhere (top level or inside functions)."""
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(block)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # `if TYPE_CHECKING:` imports never run
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in MODULES:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def test_dependencies_point_one_way():
    wrong = [f"{a} -> {b}" for a, deps in GRAPH.items() for b in deps
             if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]]]
    assert not wrong


def test_no_import_cycles_between_modules():
    """A package's __init__ importing its own submodules is not a cycle; any other loop is."""
    def edges(a):
        return {b for b in GRAPH[a] if not (MODULES[a].name == "__init__.py" and b.startswith(a + "."))
                and not (MODULES[b].name == "__init__.py" and a.startswith(b + "."))}

    cycles, state = [], {}

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges(node)):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for m in sorted(MODULES):
        if m not in state:
            visit(m, [])
    assert not cycles


def test_no_module_over_400_lines():
    big = {n: len(p.read_text().splitlines()) for n, p in MODULES.items() if len(p.read_text().splitlines()) > 400}
    assert not big


def test_every_error_brickwork_raises_on_purpose_has_one_root():
    from bricks.errors import BrickworkError

    skip = ("orchestrator.executors.vllm.worker",  # runs inside vLLM's worker processes: needs vllm
            "orchestrator.cli.__main__")  # runs the command line when imported
    loose = []
    for name in sorted(MODULES):
        if name in skip or name.startswith("bricks.toyworld.world"):
            continue
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # an optional extra (ray, langchain) that is not installed
            pytest.skip(f"{name} needs {e.name}")
        for obj in vars(module).values():
            if (isinstance(obj, type) and issubclass(obj, Exception) and obj.__module__ == name
                    and not issubclass(obj, BrickworkError)):
                loose.append(f"{name}.{obj.__name__}")
    assert not loose


def test_pkgutil_sees_every_subpackage():
    """Subpackages have an __init__.py, so an installed (non-editable) wheel ships them."""
    import orchestrator

    names = {m.name for m in pkgutil.walk_packages(orchestrator.__path__, "orchestrator.")}
    assert {"orchestrator.executors.vllm.executor", "orchestrator.integrations.batch", "orchestrator.cli.run"} <= names


def test_shipped_example_reports_hold_no_absolute_path():
    """The toy world's files are scanned in test_integrity.py; the example reports ship in the repository too."""
    found = [f"{p.relative_to(ROOT)}: {line.strip()}" for p in (ROOT / "examples").rglob("*.json")
             for line in p.read_text(encoding="utf-8").splitlines() if '"/' in line or '"~' in line]
    assert not found
