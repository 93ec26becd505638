"""The demo's figures: the README states the ranges `wit demo` prints its own beside (bench/demo.py measures
them), and the comparison reads a run's results."""

import re
from pathlib import Path

import pytest

from wit.demo import EXPECTED_TOP1, against_readme

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("name", sorted(EXPECTED_TOP1))
def test_the_readme_states_the_range_the_demo_prints(name):
    stated = re.search(rf"([\d.]+)-([\d.]+)% (?:top-1 )?on\s+{re.escape(name)}\b", README)
    assert stated, f"the README states no range for {name}"
    lo, hi = EXPECTED_TOP1[name]
    assert (float(stated.group(1)), float(stated.group(2))) == (round(100 * lo, 1), round(100 * hi, 1))


def test_a_run_is_shown_beside_the_range_and_flagged_outside_it():
    lo, hi = EXPECTED_TOP1["colours"]
    inside = {"zeroshot/colours": {"top1": (lo + hi) / 2}, "zeroshot/shapes": {"top1": 0.0}}
    lines = against_readme(inside)
    colours = next(line for line in lines if "colours" in line)
    shapes = next(line for line in lines if "shapes" in line and "colour" not in line)
    assert "outside" not in colours and f"{lo:.1%}-{hi:.1%}" in colours
    assert shapes.endswith("(outside)")
    assert not any("colour-shapes" in line for line in lines)  # not evaluated: not shown
