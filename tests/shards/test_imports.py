"""Import rules: shards never imports Ray; a missing faiss names the extra to install."""

import subprocess
import sys


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_importing_shards_never_imports_ray():
    proc = run_python(
        "import sys, shards, shards.cli, shards.metadata, shards.gpu, "
        "shards.tune_existing; print('ray' in sys.modules)"
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_missing_faiss_names_the_extra():
    proc = run_python("import sys; sys.modules['faiss'] = None; import shards")
    assert proc.returncode != 0
    assert "'cpu' extra" in proc.stderr and "'gpu' extra" in proc.stderr


def _shards_imports() -> dict[str, set[str]]:
    """Every ``shards`` module and the ``shards`` modules it imports (at any depth in it)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shards"
    names = {p.stem for p in root.glob("*.py")} - {"__init__", "__main__"}
    graph: dict[str, set[str]] = {}
    for name in names:
        found: set[str] = set()
        for node in ast.walk(ast.parse((root / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "shards":
                    found |= {a.name for a in node.names if a.name in names}
                elif node.module.startswith("shards."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("shards.")}
        graph[name] = found & names - {name}
    return graph


def test_shards_modules_import_no_cycle():
    """Layers, not a web: no module of shards reaches itself through its imports, even
    through imports inside functions (gpu -> choice -> cagra -> gpu was one)."""
    graph = _shards_imports()
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise AssertionError("import cycle: " + " -> ".join([*path[path.index(name) :], name]))
        if name in done:
            return
        for dep in sorted(graph[name]):
            visit(dep, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])


def test_leaf_modules_import_only_faiss_helpers():
    graph = _shards_imports()
    assert graph["anatomy"] <= {"_faiss"}
    assert graph["cuda"] <= {"_faiss", "errors"}
