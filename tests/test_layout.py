"""The house rules that code review forgets, checked on the source tree itself.

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


def test_every_module_is_at_most_250_lines() -> None:
    assert long_modules(REPO) == []


def test_a_class_name_is_defined_in_one_engine_module() -> None:
    assert duplicate_classes(REPO) == []


def test_the_checks_see_the_whole_package() -> None:
    """A check that finds no files finds no faults: make sure the tree is the one we think."""
    names = {str(p.relative_to(REPO)) for p in _modules(REPO)}
    assert {"batch/engine.py", "batch/sim/server.py", "batch/batchapi/mode.py"} <= names
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
