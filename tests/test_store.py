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

    async def test_an_older_file_gets_the_inbox_retention_columns(self, tmp_path: Path) -> None:
        """A database made before the inbox kept its time and tenant is upgraded on open; its
        results count as recorded at the upgrade, so retention keeps them one period more."""
        import sqlite3
        from datetime import UTC, datetime, timedelta

        from tests.conformance.store import envelope

        path = tmp_path / "old.db"
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE inbox (request_id TEXT PRIMARY KEY, owner TEXT,"
                       " claimed_until REAL NOT NULL DEFAULT 0, body BLOB)")
            from events import encode

            db.execute("INSERT INTO inbox (request_id, body) VALUES ('old', ?)",
                       (encode(envelope()),))
        store = SqliteSagaStore(path)
        await store.open()
        try:
            assert await store.recorded_result("old") is not None
            assert (await store.prune(datetime.now(UTC) - timedelta(minutes=1))).results == 0
            assert (await store.prune(datetime.now(UTC) + timedelta(seconds=5))).results == 1
        finally:
            await store.close()
