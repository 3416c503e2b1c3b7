"""The package's shape: imports flow one way (cli → stages → library → runtime), no cycle, and modules and
functions short enough to read."""

import ast
from pathlib import Path

import starfish_cli

PACKAGE = Path(starfish_cli.__file__).parent
# a package may import only packages of a lower rank; data and models know nothing of each other. The core
# steps (a copy pruned or healed) sit below both the API (a model in hand) and the stages (a model they load). The
# package's own __init__ (its version, and `load` and the API on first use) stands above everything and may be
# read by all.
RANKS = {"configs": 0, "runtime": 0, "registry": 1, "data": 2, "models": 2, "pruning": 3, "healing": 4,
         "artifacts": 5, "core": 5, "evaluation": 5, "reporting": 5, "api": 6, "onloading": 6, "tracking": 6, "stages": 7, "cli": 8,
         "__init__": 9, "__main__": 9}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Every starfish_cli module and the starfish_cli modules it imports (lazily or not)."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("starfish_cli"):
                found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                          for alias in node.names}
            elif isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names if alias.name.startswith("starfish_cli")}
        graph[name] = {module for module in found if module in modules and module != name}
    return graph


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_imports_flow_down_the_layers():
    upward = [(a, b) for a, targets in imports().items() for b in targets if b != "starfish_cli"
              and package_of(a) != package_of(b) and RANKS[package_of(a)] <= RANKS[package_of(b)]]
    assert upward == [], upward


def test_no_import_cycle():
    graph, state, cycles = imports(), {}, []

    def visit(module, path):
        state[module] = "open"
        for target in graph[module]:
            if state.get(target) == "open":
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in graph:
        if module not in state:
            visit(module, [module])
    assert cycles == []


def test_every_package_has_a_rank():
    assert {package_of(module) for module in imports()} <= set(RANKS)


def test_modules_and_functions_stay_short():
    long_modules, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        if len(source.splitlines()) > 400:
            long_modules.append(module_name(path))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{module_name(path)}.{node.name}")
    assert long_modules == [] and long_functions == []
