"""Running a test pipeline and reading what its stages counted, as the build does."""

from __future__ import annotations

import os

from pipelines import counters


def run_counted(p, folder) -> counters.Counts:
    """Run `p` with its counts written under `folder`; what its stages counted."""
    path = os.path.join(str(folder), counters.COUNTS)
    _ = p | "Counts" >> counters.WriteCounts(path)
    p.run().wait_until_finish()
    return counters.Counts.read(path)
