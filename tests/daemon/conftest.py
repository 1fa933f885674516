"""Fixtures of the daemon tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubo_fake import FakeKubo


@pytest.fixture
def kubo() -> Iterator[FakeKubo]:
    """A faithful local fake of Kubo's RPC API on 127.0.0.1 (kubo_fake.py), stopped afterwards."""
    fake = FakeKubo()
    yield fake
    fake.down()
