"""The package's import graph has no cycle, counting every import a module can run.

Module-level, function-level and `TYPE_CHECKING` imports all count (an import inside a function
that dodges a cycle is still a cycle), and importing `a.b` from outside package `a` depends on
`a/__init__` too, because Python runs it first.
"""
import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parent.parent / "src"


def modules_under(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every module of `package` under `root`."""
    found = {}
    for path in (root / package).rglob("*.py"):
        parts = list(path.relative_to(root).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imported_names(name: str, modules: dict[str, Path]) -> set[str]:
    """Every known module `name` names in an import statement anywhere in its file."""
    is_package = modules[name].name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(modules[name].read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # a submodule, else a name the module `base` defines
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules}


def dependencies(name: str, modules: dict[str, Path]) -> set[str]:
    """What importing `name` runs: each imported module and the `__init__` of every package on
    its path that `name` is not inside."""
    deps = set()
    for target in imported_names(name, modules):
        parts = target.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix == target or not (name == prefix or name.startswith(prefix + ".")):
                deps.add(prefix)
    deps.discard(name)
    return {d for d in deps if d in modules}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def graph_of(root: Path, package: str) -> dict[str, set[str]]:
    modules = modules_under(root, package)
    return {name: dependencies(name, modules) for name in modules}


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_headbench_has_no_import_cycle():
    cycle = find_cycle(graph_of(SOURCE, "headbench"))
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_a_function_level_import_that_closes_a_loop_is_a_cycle(tmp_path):
    root = write(tmp_path, {"p/__init__.py": "", "p/a.py": "from . import b\n",
                            "p/b.py": "def f():\n    from .a import x\n"})
    assert find_cycle(graph_of(root, "p")) == ["p.a", "p.b", "p.a"]


def test_reading_a_name_from_the_package_init_depends_on_it(tmp_path):
    # run.py's old `from . import __version__`: the package __init__ imported run.py again
    root = write(tmp_path, {"p/__init__.py": "__version__ = '1'\nfrom . import run\n",
                            "p/run.py": "from . import __version__\n"})
    assert find_cycle(graph_of(root, "p")) == ["p", "p.run", "p"]


def test_importing_a_submodule_from_outside_its_package_runs_the_package_init(tmp_path):
    root = write(tmp_path, {"p/__init__.py": "from . import job\n", "p/job.py": "from .r import page\n",
                            "p/r/__init__.py": "", "p/r/page.py": "", "p/a/__init__.py": "",
                            "p/a/m.py": "from ..r import page\n"})
    modules = modules_under(root, "p")
    assert dependencies("p.a.m", modules) == {"p.r", "p.r.page"}
    assert dependencies("p.r.page", modules) == set()  # inside p.r: its __init__ already runs


def test_no_source_file_is_over_600_lines():
    long = {name: n for name, path in modules_under(SOURCE, "headbench").items()
            if (n := len(path.read_text().splitlines())) > 600}
    assert not long, f"split these modules: {long}"
