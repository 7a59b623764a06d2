from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog
from hypothesis import settings

settings.register_profile("ci", max_examples=60, deadline=None)
settings.register_profile("dev", max_examples=25, deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    """A CLI test configures structlog for its own streams; later tests get the defaults."""
    yield
    structlog.reset_defaults()
