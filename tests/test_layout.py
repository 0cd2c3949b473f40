"""The house rules that code review forgets, checked on the source tree itself.

- The package is a stack of layers (`LAYERS`, lowest first): a module imports only from its own layer
  and the layers below it, function-level and type-checking imports included, and no import circle
  joins modules of the package. At most `MAX_TOP` modules live directly in `batch/`.
- The simulator (`batch/sim`) imports nothing from the rest of `batch`: it must stay an independent
  witness of the client, not a mirror of its assumptions. Every import is parsed (`ast`), absolute
  (`import batch.x`, `from batch import x`) and relative (`from .. import x`) alike.
- No module under `batch/` is longer than 250 lines, counted as `wc -l` counts (newline characters).
- A class name is defined at top level in one module of the engine only (one definition per type);
  the simulator, a separate witness, may have its own names.

Each check is a function of a source root, so the tests below also run it on a small bad tree and
see it fail.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import REPO

MAX_LINES = 250
SIM = ("batch", "sim")
MAX_TOP = 6

# The layers, lowest first: each may import itself and what stands before it, never what comes after.
# The leaves (the error tree, the records passed between stages, the answer's fields) sit under all;
# the simulator imports nothing of batch (checked on its own below); `batch/__init__.py` and
# `batch/__main__.py` are the roof and may import any layer.
LAYERS: list[tuple[str, ...]] = [
    ("errors", "records", "fields"),  # the leaves: modules directly in batch/
    ("sim",),       # the Groq double
    ("job",),       # options, their checks, paths, catalog, endpoint, templates, schema
    ("render",),    # rows -> chat requests and fingerprints
    ("tables",),    # Arrow in and out
    ("store",),     # everything SQLite, fingerprints, recall
    ("report",),    # counters, figures, progress, the HTML page
    ("send",),      # pacing, retry, stops, spend cap, the HTTP client
    ("batchapi",),  # Groq's Batch API: pass 1 as files and batches
    ("engine",),    # one run: preflight, pass 1 online, pass 2
    ("dataset",),   # a partitioned input, part by part
    ("cluster",),   # the same on Dask
    ("doors",),     # command line, Python, the simulator's endpoint
]
ROOF = {("batch",), ("batch", "__main__")}


def _modules(root: Path) -> list[Path]:
    return sorted((root / "batch").rglob("*.py"))


def _dotted(root: Path, path: Path) -> tuple[str, ...]:
    """The module's package path: batch/sim/server.py -> ("batch", "sim", "server")."""
    parts = path.relative_to(root).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported(root: Path, path: Path) -> list[tuple[int, tuple[str, ...]]]:
    """(line, absolute module) of every import in a module, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _dotted(root, path)[:-1] if path.name != "__init__.py" else _dotted(root, path)
    found: list[tuple[int, tuple[str, ...]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, tuple(alias.name.split("."))) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            module = base + tuple(node.module.split(".")) if node.module else base
            # `from batch import config` imports the module batch.config: check each name as well.
            found += [(node.lineno, (*module, alias.name)) for alias in node.names]
    return found


def sim_imports_outside(root: Path) -> list[str]:
    """Imports in batch/sim that reach the rest of batch, as "file:line: module"."""
    bad = []
    for path in _modules(root):
        if _dotted(root, path)[:2] != SIM:
            continue
        for line, module in _imported(root, path):
            if module[:1] == ("batch",) and module[:2] != SIM:
                bad.append(f"{path.relative_to(root)}:{line}: {'.'.join(module)}")
    return bad


def _layer(module: tuple[str, ...]) -> int | None:
    """The index in LAYERS of a batch module (None for the roof or for what is not batch)."""
    if module[:1] != ("batch",) or module in ROOF or len(module) < 2:
        return None
    for i, names in enumerate(LAYERS):
        if module[1] in names:
            return i
    raise AssertionError(f"{'.'.join(module)} is in no layer: add it to LAYERS")


def _resolve(root: Path, module: tuple[str, ...]) -> tuple[str, ...]:
    """The module a dotted import name lands on: `batch.job.config.Job` -> batch.job.config."""
    for n in range(len(module), 0, -1):
        base = root.joinpath(*module[:n])
        if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
            return module[:n]
    return module


def upward_imports(root: Path) -> list[str]:
    """Imports that reach a higher layer, as "file:line: module (layer -> layer)"."""
    bad = []
    for path in _modules(root):
        here = _layer(_dotted(root, path))
        if here is None:
            continue
        for line, module in _imported(root, path):
            there = _layer(module)
            if there is not None and there > here:
                bad.append(f"{path.relative_to(root)}:{line}: {'.'.join(_resolve(root, module))} "
                           f"({'/'.join(LAYERS[here])} -> {'/'.join(LAYERS[there])})")
    return bad


def import_circles(root: Path) -> list[list[str]]:
    """The strongly connected groups of two or more modules in the import graph (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for path in _modules(root):
        name = ".".join(_dotted(root, path))
        graph[name] = {".".join(_resolve(root, m)) for _, m in _imported(root, path)
                       if m[:1] == ("batch",)} - {name}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return circles


def top_modules(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "batch").glob("*.py"))


def long_modules(root: Path) -> list[str]:
    """Modules over MAX_LINES lines, as "file: N lines"."""
    counts = {path: path.read_bytes().count(b"\n") for path in _modules(root)}
    return [f"{p.relative_to(root)}: {n} lines" for p, n in counts.items() if n > MAX_LINES]


def duplicate_classes(root: Path) -> list[str]:
    """Class names defined at top level in more than one engine module (batch/sim left out)."""
    where: dict[str, list[str]] = defaultdict(list)
    for path in _modules(root):
        if _dotted(root, path)[:2] == SIM:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                where[node.name].append(str(path.relative_to(root)))
    return [f"{name}: {', '.join(files)}" for name, files in sorted(where.items()) if len(files) > 1]


def test_the_simulator_imports_nothing_from_the_rest_of_batch() -> None:
    assert sim_imports_outside(REPO) == []


def test_imports_only_go_down_the_layers() -> None:
    assert upward_imports(REPO) == []


def test_no_import_circles() -> None:
    assert import_circles(REPO) == []


def test_every_folder_of_batch_is_a_layer_and_few_modules_sit_on_top() -> None:
    folders = {p.name for p in (REPO / "batch").iterdir() if (p / "__init__.py").exists()}
    assert folders == {name for names in LAYERS for name in names} - {"errors", "records", "fields"}
    assert len(top_modules(REPO)) <= MAX_TOP, top_modules(REPO)


def test_every_module_is_at_most_250_lines() -> None:
    assert long_modules(REPO) == []


def test_a_class_name_is_defined_in_one_engine_module() -> None:
    assert duplicate_classes(REPO) == []


def test_the_checks_see_the_whole_package() -> None:
    """A check that finds no files finds no faults: make sure the tree is the one we think."""
    names = {str(p.relative_to(REPO)) for p in _modules(REPO)}
    assert {"batch/engine/run.py", "batch/sim/server.py", "batch/batchapi/mode.py"} <= names
    assert ("batch", "sim") in {_dotted(REPO, p)[:2] for p in _modules(REPO)}


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in {"batch/__init__.py": "", "batch/sim/__init__.py": "", **files}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


@pytest.mark.parametrize(("source", "culprit"), [
    ("import batch.config\n", "batch.config"),
    ("from batch import records\n", "batch.records"),
    ("from batch.errors import JobError\n", "batch.errors.JobError"),
    ("from .. import store\n", "batch.store"),
    ("from ..client import Client\n", "batch.client.Client"),
    ("def f():\n    from ..sim import x\n    from ...batch import y\n", "batch.sim.x"),
])
def test_the_import_check_catches_a_way_out(tmp_path: Path, source: str, culprit: str) -> None:
    root = _tree(tmp_path, {"batch/sim/bad.py": source, "batch/sim/good.py": "from . import bad\n"
                            "from .bad import f\nimport json\nfrom batch.sim import good\n"})
    found = sim_imports_outside(root)
    if culprit == "batch.sim.x":  # ..sim from batch/sim/bad.py is batch.sim: allowed; ...batch is not
        assert [f.split(": ")[1] for f in found] == ["batch.y"]
    else:
        assert [f.split(": ")[1] for f in found] == [culprit]
        assert found[0].startswith("batch/sim/bad.py:")


def test_the_size_and_class_checks_catch_their_faults(tmp_path: Path) -> None:
    root = _tree(tmp_path, {
        "batch/long.py": "x = 1\n" * (MAX_LINES + 1),
        "batch/exact.py": "x = 1\n" * MAX_LINES,
        "batch/a.py": "class Twice:\n    pass\n\n\nclass Once:\n    pass\n",
        "batch/wing/b.py": "class Twice:\n    pass\n\n\ndef f():\n    class Inner:\n        pass\n",
        "batch/wing/c.py": "class Inner:\n    pass\n",
        "batch/sim/server.py": "class Once:\n    pass\n",
    })
    assert long_modules(root) == [f"batch/long.py: {MAX_LINES + 1} lines"]
    assert duplicate_classes(root) == ["Twice: batch/a.py, batch/wing/b.py"]


@pytest.mark.parametrize(("path", "source", "found"), [
    # a module-level import of a higher layer, in each spelling
    ("batch/store/bad.py", "from batch.send.client import Client\n", "batch.send.client"),
    ("batch/store/bad.py", "from ..send import client\n", "batch.send.client"),
    ("batch/job/bad.py", "import batch.engine.run\n", "batch.engine.run"),
    # the same hidden in a function, or under TYPE_CHECKING
    ("batch/render/bad.py", "def f():\n    from batch.tables import source\n", "batch.tables.source"),
    ("batch/errors.py", "if TYPE_CHECKING:\n    from .job.config import Job\n", "batch.job.config"),
])
def test_the_layer_check_catches_an_upward_import(tmp_path: Path, path: str, source: str, found: str) -> None:
    root = _tree(tmp_path, {f"batch/{name}/__init__.py": "" for names in LAYERS[1:] for name in names}
                 | {"batch/send/client.py": "", "batch/engine/run.py": "", "batch/tables/source.py": "",
                    "batch/job/config.py": "", path: source,
                    "batch/doors/ok.py": "from batch.engine import run\nfrom ..job.config import Job\n",
                    "batch/__init__.py": "from batch.doors import ok\n"})
    bad = upward_imports(root)
    assert len(bad) == 1 and bad[0].startswith(f"{path}:") and f": {found} (" in bad[0], bad


def test_the_circle_check_finds_a_circle_through_a_function_level_import(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"batch/render/__init__.py": "",
                            "batch/render/a.py": "from batch.render import b\n",
                            "batch/render/b.py": "def f():\n    from .c import x\n",
                            "batch/render/c.py": "from batch.render.a import y\n",
                            "batch/render/d.py": "from batch.render import a\n"})
    assert import_circles(root) == [["batch.render.a", "batch.render.b", "batch.render.c"]]
