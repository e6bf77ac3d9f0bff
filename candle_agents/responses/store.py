"""Stored responses in SQLite, so ``previous_response_id`` chains survive a restart.

Each row keeps the response object and the whole conversation up to it (the
previous chain's items, this request's input, its output), so continuing a
chain reads one row, however long the chain is.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import Any

from candle_agents.responses.protocol import Response

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    conversation TEXT NOT NULL
)
"""


def default_db_path() -> Path:
    """``responses.db`` in the user's data directory (XDG on Linux, the platform's elsewhere)."""
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "candle-agents" / "responses.db"


class ResponseStore:
    """Responses by id in one SQLite file (or ``":memory:"``); safe to share between threads."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        target = str(path) if path is not None else str(default_db_path())
        if target != ":memory:":
            Path(target).parent.mkdir(parents=True, exist_ok=True)
        self.path = target
        self._lock = threading.Lock()
        # One connection under a lock: writes are single rows, far shorter than a model turn.
        self._db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        if target != ":memory:":
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(_SCHEMA)

    def save(
        self,
        response: Response,
        input_items: list[dict[str, Any]],
        conversation: list[dict[str, Any]],
    ) -> None:
        row = (
            response.id,
            response.created_at,
            response.model_dump_json(),
            json.dumps(input_items, ensure_ascii=False),
            json.dumps(conversation, ensure_ascii=False),
        )
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)", row)

    def get(self, response_id: str) -> Response | None:
        row = self._row("response", response_id)
        return Response.model_validate_json(row) if row is not None else None

    def conversation(self, response_id: str) -> list[dict[str, Any]] | None:
        """The items of the chain ending at this response (inputs and outputs), in order."""
        row = self._row("conversation", response_id)
        return json.loads(row) if row is not None else None

    def input_items(self, response_id: str) -> list[dict[str, Any]] | None:
        row = self._row("input_items", response_id)
        return json.loads(row) if row is not None else None

    def delete(self, response_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,))
        return cursor.rowcount > 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _row(self, column: str, response_id: str) -> str | None:
        with self._lock:
            found = self._db.execute(
                f"SELECT {column} FROM responses WHERE id = ?", (response_id,)
            ).fetchone()
        return found[0] if found else None
