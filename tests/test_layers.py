"""The package's layers: core never imports the viewer or a GUI toolkit, and one source for
the defaults every tool shares."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GUI = ("viewer", "dearpygui")


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_core_never_imports_the_viewer_or_dearpygui() -> None:
    """Every import statement of core/, wherever it stands (lazy ones in functions too)."""
    bad = [
        f"{path.relative_to(ROOT)}: {name}"
        for path in sorted((ROOT / "core").rglob("*.py"))
        for name in sorted(_imports(path))
        if name.split(".")[0] in GUI
    ]
    assert bad == []


def test_importing_every_core_module_loads_no_gui() -> None:
    modules = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in sorted((ROOT / "core").rglob("*.py"))
    ]
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {GUI!r}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_one_default_env_and_one_shipped_checkpoint() -> None:
    from core.defaults import DEFAULT_ENV, default_checkpoint
    from core.training import TrainConfig

    assert TrainConfig().env == DEFAULT_ENV
    shipped = default_checkpoint()
    if shipped is not None:
        import json

        assert json.loads((shipped / "config.json").read_text())["env"] == DEFAULT_ENV


def test_random_networks_are_the_same_every_time_and_leave_the_global_seed() -> None:
    import torch

    from core.defaults import random_networks

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, _ = random_networks(28, 5)
    b, _ = random_networks(28, 5)
    assert torch.equal(torch.rand(1), before)
    for x, y in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(x, y)
    assert not any(p.requires_grad for p in a.parameters()) and not a.training
