"""Loaded by the engines tests' SDK workers (on their PYTHONPATH): while the file WIT_FAIL_ONCE exists, the
next bundle of the matcher to finish removes it and fails, after counting its captions, as a worker lost
mid-task would; the runner then retries that bundle."""

import os

_ARMED = os.environ.get("WIT_FAIL_ONCE")
if _ARMED:
    from pipelines import match

    _process = match._MatchBatch.process

    def _fail_once(self, batch):
        yield from _process(self, batch)
        try:
            os.unlink(_ARMED)  # one worker wins
        except FileNotFoundError:
            return
        raise RuntimeError("failing this bundle once, as a lost worker would")

    match._MatchBatch.process = _fail_once
