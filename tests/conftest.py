"""Shared fixtures: a synthetic web served on 127.0.0.1 for the whole session."""

from __future__ import annotations

import logging

import pytest

from wit.cli import QuietBeamImport
from wit.synthweb import SyntheticServer, SyntheticWeb

logging.getLogger().addFilter(QuietBeamImport())


@pytest.fixture(scope="session")
def web_server():
    web = SyntheticWeb(seed=1, count=800)
    with SyntheticServer(web, slow_seconds=2.0) as server:
        yield web, server
