"""The layering rule (pyproject.toml, [tool.importlinter]) holds, and every module of wit has a layer."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import wit

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 kept, 0 broken" in proc.stdout


def test_every_wit_module_has_a_layer():
    """A new module of wit must say whether it is core (imports nothing of the project) or sits on top."""
    config = (ROOT / "pyproject.toml").read_text()
    layers = config[config.index('type = "layers"'):]
    layered = set(re.findall(r"wit\.\w+", layers[:layers.index("]")]))
    modules = {f"wit.{m.name}" for m in pkgutil.iter_modules(wit.__path__)}
    assert modules == layered
