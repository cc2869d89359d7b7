"""Stored /v1/responses: an SQLite file under the server's home, bounded by age, count and size.

Every call runs in a worker thread (asyncio.to_thread) with its own connection, so the event loop never waits
on the disk and threads never share a connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
"""


@dataclass
class StoredResponse:
    """A stored response object and the input items it was generated from (previous turns included)."""

    response: dict[str, Any]
    input_items: list[dict[str, Any]]


class ResponseStore:
    """Responses kept for `previous_response_id` and the retrieve/list/delete routes, across restarts."""

    def __init__(self, path: Path, retention_days: float, max_stored: int, max_bytes: int) -> None:
        self.path = path
        self.retention_s = retention_days * 86400.0
        self.max_stored = max_stored
        self.max_bytes = max_bytes
        self._ready = False

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30)
        try:
            if not self._ready:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.executescript(_SCHEMA)
                self._ready = True
            with connection:  # one transaction: committed on success, rolled back on an exception
                yield connection
        finally:
            connection.close()

    def _cutoff(self) -> float:
        return time.time() - self.retention_s

    def _save(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> bool:
        body = json.dumps(response, ensure_ascii=False)
        items = json.dumps(input_items, ensure_ascii=False)
        size = len(body.encode()) + len(items.encode())
        if size > self.max_bytes:
            log.warning(
                "response %s (%d bytes) is over responses_max_bytes; not stored", response["id"], size
            )
            return False
        with self._connect() as db:
            db.execute(
                "INSERT OR REPLACE INTO responses (id, created_at, response, input_items, size) "
                "VALUES (?, ?, ?, ?, ?)",
                (response["id"], float(response["created_at"]), body, items, size),
            )
            self._prune(db)
        return True

    def _prune(self, db: sqlite3.Connection) -> None:
        """Drop what is past retention, then the oldest until both the count and the size bounds hold."""
        db.execute("DELETE FROM responses WHERE created_at < ?", (self._cutoff(),))
        count, total = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM responses").fetchone()
        if count <= self.max_stored and total <= self.max_bytes:
            return
        rows = db.execute("SELECT id, size FROM responses ORDER BY created_at, rowid").fetchall()
        doomed = []
        for ident, size in rows:
            if count <= self.max_stored and total <= self.max_bytes:
                break
            doomed.append((ident,))
            count -= 1
            total -= size
        db.executemany("DELETE FROM responses WHERE id = ?", doomed)

    def _get(self, ident: str) -> StoredResponse | None:
        with self._connect() as db:
            row = db.execute(
                "SELECT response, input_items FROM responses WHERE id = ? AND created_at >= ?",
                (ident, self._cutoff()),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(json.loads(row[0]), json.loads(row[1]))

    def _delete(self, ident: str) -> bool:
        with self._connect() as db:
            return db.execute("DELETE FROM responses WHERE id = ?", (ident,)).rowcount > 0

    async def save(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> bool:
        """Store (or replace) a response; False when it alone is over the size bound."""
        return await asyncio.to_thread(self._save, response, input_items)

    async def get(self, ident: str) -> StoredResponse | None:
        """A stored response within retention, or None."""
        return await asyncio.to_thread(self._get, ident)

    async def delete(self, ident: str) -> bool:
        """Delete a stored response; False when there was none."""
        return await asyncio.to_thread(self._delete, ident)
