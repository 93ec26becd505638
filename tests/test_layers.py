"""The layering rule (pyproject.toml, [tool.importlinter]) holds, every module of wit has a layer, and the
README lists the bottom layers as they are."""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import wit
import wit.core
import wit.net

ROOT = Path(__file__).resolve().parents[1]


def test_import_linter_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    proc = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


def test_every_wit_module_has_a_layer():
    """A new module of wit must go into a layer: the core, the web client, or the application on top."""
    config = (ROOT / "pyproject.toml").read_text()
    layers = config[config.index('type = "layers"'):]
    layered = set(re.findall(r"wit\.\w+", layers[:layers.index("]")]))
    modules = {f"wit.{m.name}" for m in pkgutil.iter_modules(wit.__path__)}
    assert modules == layered


def test_readme_lists_the_bottom_layers_as_they_are():
    readme = (ROOT / "README.md").read_text()
    for package in (wit.core, wit.net):
        folder = package.__name__.replace(".", "/")
        listed = re.search(rf"`{folder}/` \(([a-z_, ]+)\)", readme)
        assert listed, f"the README's layer paragraph does not list {folder}/"
        assert listed.group(1).split(", ") == sorted(m.name for m in pkgutil.iter_modules(package.__path__))
