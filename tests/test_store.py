"""The in-memory and SQLite stores pass the store contract."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from saga import InMemorySagaStore, SqliteSagaStore
from tests.conformance.store import StoreContract


class TestInMemoryStore(StoreContract):
    """The in-memory store behaves as every store must."""

    @pytest.fixture
    async def store(self) -> AsyncIterator[InMemorySagaStore]:
        s = InMemorySagaStore()
        await s.open()
        yield s
        await s.close()


class TestSqliteStore(StoreContract):
    """The SQLite store behaves as every store must."""

    @pytest.fixture
    async def store(self, tmp_path: Path) -> AsyncIterator[SqliteSagaStore]:
        s = SqliteSagaStore(tmp_path / "store.db")
        await s.open()
        yield s
        await s.close()
