"""The package's import graph: no circles, and the library core imports nothing from the harness.

Every import counts, at module level or inside a function, so a late import cannot hide a circle.
The graph is read from the source with ``ast``; nothing is imported.
"""

import ast
import re
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "sparsebench"

# The library core: what a user needs to sparsify a model and count its memory. Everything else in
# the package (data, models, budgets, training, results, gate, report, cli, ...) is the harness.
CORE = {"sparsebench", "sparsebench.schemes", "sparsebench.patterns", "sparsebench.sparsify", "sparsebench.ledger",
        "sparsebench.schedules", "sparsebench.distributions", "sparsebench.restructure", "sparsebench.updater",
        "sparsebench.machine", "sparsebench.atomic", "sparsebench.timing", "sparsebench.allocator",
        "sparsebench.summary", "sparsebench.unsparsify", "sparsebench.checkpoint"}
# what `pip install sparsebench` (the library, no extra) installs besides the standard library
LIBRARY_DEPENDENCIES = {"torch", "numpy", "tabulate", "ninja"}
CORE_PACKAGES = ("sparsebench.representations", "sparsebench.kernels")  # with every module under them


def is_core(module: str) -> bool:
    return module in CORE or any(module == p or module.startswith(p + ".") for p in CORE_PACKAGES)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules ``path`` imports, relative imports resolved; ``from pkg import sub`` is
    an edge to ``pkg.sub`` when ``sub`` is a module, else to ``pkg``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in modules and t != name}
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, path + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [start])
            if cycle:
                return cycle
    return None


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert {"sparsebench.schemes", "sparsebench.sparsify", "sparsebench.representations.csr"} <= set(graph)
    assert "sparsebench.patterns" in graph["sparsebench.schemes"]  # an edge is found
    assert "sparsebench.kernels" in graph["sparsebench.representations.csr"]  # `from .. import kernels`


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_core_imports_nothing_from_the_harness():
    bad = [f"{m} imports {t}" for m, targets in import_graph().items() if is_core(m)
           for t in sorted(targets) if not is_core(t)]
    assert not bad, "the library core imports the harness:\n" + "\n".join(bad)
    import sparsebench  # its names are imported lazily, by module name: those modules are core too

    assert all(is_core(f"sparsebench.{m}") for m in sparsebench._EXPORTS.values())


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of the absolute imports of ``path`` that are neither the standard library nor ours."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"sparsebench", "__future__"}


# packages of an optional extra that a core module may import inside a function, never at its top
OPTIONAL_IMPORTS = {"sparseprop"}  # the `peers` extra: the sparseprop representation, where installed


def top_level_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_core_needs_only_the_library_dependencies():
    """The core runs on a plain `pip install sparsebench`: none of the harness extra's packages, and an
    optional extra's only inside the functions that need it."""
    bad = {f"{module_name(p)} imports {m}" for p in sorted(PACKAGE.rglob("*.py")) if is_core(module_name(p))
           for m in third_party_imports(p) - LIBRARY_DEPENDENCIES - OPTIONAL_IMPORTS}
    bad |= {f"{module_name(p)} imports {m} at its top" for p in sorted(PACKAGE.rglob("*.py"))
            if is_core(module_name(p)) for m in top_level_imports(p) & OPTIONAL_IMPORTS}
    assert not bad, "the library core needs a package outside its dependencies:\n" + "\n".join(sorted(bad))
    block = re.search(r"^dependencies = \[(.*?)^\]", (PACKAGE.parent / "pyproject.toml").read_text(), re.S | re.M)
    declared = {re.split(r"[<>=!;\[ ]", d)[0] for d in re.findall(r'^\s*"([^"]+)"', block.group(1), re.M)}
    assert LIBRARY_DEPENDENCIES <= declared, sorted(LIBRARY_DEPENDENCIES - declared)


def test_the_checks_catch_what_they_look_for():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert not is_core("sparsebench.results") and is_core("sparsebench.representations.auto")


def test_a_scheme_is_validated_without_torch():
    code = ("import sys; from sparsebench.schemes import parse_scheme; parse_scheme('block:4x4:0.5@bsr'); "
            "parse_scheme('nm:2:4@semi'); assert 'torch' not in sys.modules, 'torch was imported'; "
            "assert not [m for m in sys.modules if m.startswith('sparsebench.representations')]")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)
