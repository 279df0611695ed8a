"""The architecture, checked: stages meet only through artifacts, and configs load without torch.

Floors, top to bottom (a module may import only from floors below its own):
- the CLI (`cli.py`, `batchrec/commands/`) and the job runner (`batchrec/pipeline.py`);
- the stages (STAGES), which never import one another;
- everything else in `batchrec/`: artifacts and their schema, storage, ids, the models, and the
  pure helpers the stages share (ranking, batching, distributed, cluster, export, config, log).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STAGES = {
    "batchrec.data.synth",
    "batchrec.data.download",
    "batchrec.data.prepare",
    "batchrec.data.stats",
    "batchrec.train",
    "batchrec.evaluate",
    "batchrec.score",
    "batchrec.index",
    "batchrec.recommend",
    "batchrec.report",
}
TOP = {"cli", "batchrec.pipeline", "batchrec.__main__"}
HEAVY = ("torch", "faiss", "ray")


def _modules() -> dict[str, Path]:
    out = {"cli": ROOT / "cli.py"}
    for path in (ROOT / "batchrec").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import in the file, function bodies included."""
    tree = ast.parse(path.read_text())
    top = {id(n) for n in tree.body}
    guarded = {
        id(n) for node in tree.body if isinstance(node, ast.If) for n in ast.walk(node)
    }  # TYPE_CHECKING
    found = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, id(node) in top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(f"{node.module}.{a.name}", id(node) in top) for a in node.names]
    return found


def _resolve(name: str, known: dict[str, Path]) -> str | None:
    """The batchrec module an import names (`from batchrec import train` → batchrec.train)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _floor(module: str) -> int:
    if module in TOP or module.startswith("batchrec.commands"):
        return 2
    return 1 if module in STAGES else 0


def test_no_module_imports_a_stage_beside_or_above_it():
    known = _modules()
    wrong = []
    for module, path in known.items():
        for name, _ in _imports(path):
            target = _resolve(name, known)
            if target is None or target == module or target in ("batchrec",):
                continue
            if _floor(target) > _floor(module) or (_floor(module) == 1 and target in STAGES):
                wrong.append(f"{module} imports {target}")
    assert wrong == []


def test_the_cli_and_the_runner_import_nothing_heavy_at_module_level():
    known = _modules()
    heavy = [
        f"{module} imports {name}"
        for module, path in known.items()
        if _floor(module) == 2
        for name, at_top in _imports(path)
        if at_top and name.split(".")[0] in HEAVY
    ]
    assert heavy == []


@pytest.mark.parametrize("module", ["cli", "batchrec.pipeline", *sorted(STAGES)])
def test_configs_load_without_torch_faiss_or_ray(module):
    code = (
        f"import sys, {module}; "
        f"loaded = sorted(m for m in {HEAVY!r} if m in sys.modules); "
        "print(loaded); sys.exit(1 if loaded else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"importing {module} loads {res.stdout.strip()} {res.stderr[-500:]}"
