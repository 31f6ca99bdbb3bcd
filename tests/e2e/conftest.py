"""Fixtures of the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fleet import Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    """`groundcontrol serve` (SQLite) with an operator token and an empty group "shops"."""
    fleet = Fleet(tmp_path).start()
    fleet.create_group("shops")
    yield fleet
    fleet.stop()
