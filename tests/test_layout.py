"""The shape of the package: floors that imports only go down (imports inside functions count too), no
import circle, drivers (rlhf_jax/runs) imported only by the command line, no module over 400 lines, and
the linter's rules kept."""

import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.join(os.path.dirname(__file__), "..", "rlhf_jax")
# The floors, lowest first: a module (or package, by the longest matching prefix) imports from its own floor
# and those below it, never from one above.
FLOORS = [
    ("maths and plumbing", "config.core losses rl.maths rl.algorithms optim frontier files allocator distributed "
                           "launch preemption train_state metrics plots scoring data.records data.formats labeling "
                           "without_torch"),
    ("configuration", "config"),
    ("offline assets, the mesh, compile targets", "assets compile_cache sharding targets"),
    ("models, data, sampling, checkpoints", "models data sampling feeding checkpoint"),
    ("jitted steps and programs, tasks, scorers", "steps tasks rl trained plan feedback"),
    ("drivers", "runs"),
    ("the command line", "cli"),
]


def modules() -> dict[str, str]:
    """Dotted module name -> path, for every module of the package (a package is its __init__)."""
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, os.path.dirname(ROOT))[:-3].split(os.sep)
                found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: str, name: str, known) -> set[str]:
    """The package modules ``path`` imports anywhere in it: ``import a.b``, ``from a import b`` (b a module
    or a name in a), relative imports."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else [])
                )
            for alias in node.names:
                out.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {m for m in out if m in known and m != name}


def graph():
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def floor(module: str) -> int:
    name = module[len("rlhf_jax."):] if module != "rlhf_jax" else ""
    matches = [(len(prefix), level) for level, (_, prefixes) in enumerate(FLOORS) for prefix in prefixes.split()
               if name == prefix or name.startswith(prefix + ".")]
    assert matches or name == "", f"{module} is on no floor: add it to FLOORS"
    return max(matches)[1] if matches else 0


def test_imports_only_go_down():
    upward = sorted(f"{name} ({FLOORS[floor(name)][0]}) imports {target} ({FLOORS[floor(target)][0]})"
                    for name, targets in graph().items() for target in targets if floor(target) > floor(name))
    assert upward == [], "\n".join(upward)


def test_no_import_circle():
    edges = graph()
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(edges[node]):
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert cycles == [], "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_drivers_are_imported_only_by_the_command_line():
    upward = sorted((name, target) for name, targets in graph().items() for target in targets
                    if target.startswith("rlhf_jax.runs") and not name.startswith(("rlhf_jax.runs", "rlhf_jax.cli")))
    assert upward == []


@pytest.mark.parametrize("name,path", sorted(modules().items()))
def test_no_module_over_400_lines(name, path):
    assert sum(1 for _ in open(path)) <= 400, name


def test_the_code_passes_ruff():
    """The linter configured in pyproject.toml ([tool.ruff]) finds nothing in the repository."""
    ruff = shutil.which("ruff", path=os.path.dirname(sys.executable)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed here (the test extra installs it)")
    result = subprocess.run([ruff, "check", "--no-cache", os.path.join(ROOT, "..")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:]
