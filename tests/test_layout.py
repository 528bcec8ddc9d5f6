"""The house rules: imports run one way between the package's layers (README, "Where things are")."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "innerpissa"
#: lower layers first; a module may import only from its own layer or below
LAYERS = [("anatomy", "fileio", "errors"), ("models", "adapter", "data", "split"), ("steering",), ("eval",), ("serve",),
          ("train",), ("baselines",), ("methods",), ("compare", "ablate"),
          ("cli", "cli_eval", "demo"), ("__init__",)]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def test_imports_never_run_upward():
    backward = []
    for path in SRC.rglob("*.py"):
        top = path.relative_to(SRC).parts[0].removesuffix(".py")
        assert top in RANK, f"{top} is in no layer: add it to LAYERS and to the README's import order"
        for m in re.finditer(r"^\s*from innerpissa\.(\w+)", path.read_text(), re.M):
            if RANK[m.group(1)] > RANK[top]:
                backward.append(f"{path.relative_to(SRC)} imports innerpissa.{m.group(1)}")
    assert not backward, backward


def test_no_private_names_cross_a_package():
    """A `_name` stays inside its package (top-level module or subpackage): callers elsewhere need it public."""
    private = []
    for path in SRC.rglob("*.py"):
        top = path.relative_to(SRC).parts[0].removesuffix(".py")
        for m in re.finditer(r"^\s*from innerpissa\.(\w+)[\w.]* import (\(([^)]*)\)|.*$)", path.read_text(), re.M):
            names = (m.group(3) if m.group(3) is not None else m.group(2)).replace("\n", ",").split(",")
            private += [f"{path.relative_to(SRC)}: {m.group(1)}.{n.strip()}" for n in names
                        if n.strip().startswith("_") and m.group(1) != top]
    assert not private, private
