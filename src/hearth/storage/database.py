"""What `SQLiteFile` and `PostgresDatabase` share: the interface their stores call, and `ping`.

A store written against `Database` (the rollout state's SQL backends,
`hearth.traffic.state_sql`) reads through `read()`, writes in `transaction()` and checks
the database with `ping()`, whichever of the two it was given; only its SQL differs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from typing import Any, Generic, Protocol, TypeVar


class _Cursor(Protocol):
    def fetchone(self) -> Any: ...


class Connection(Protocol):
    """What `ping` needs of a connection (sqlite3's and psycopg's both have it)."""

    def execute(self, query: str, /) -> _Cursor: ...


C = TypeVar("C", bound=Connection)


class Database(ABC, Generic[C]):
    """One database; every failure to reach or use it raises the caller's `error` type."""

    name: str  # names the database in error messages
    _error: type[Exception]

    @abstractmethod
    def read(self) -> AbstractContextManager[C]:
        """A connection outside any transaction (each statement commits on its own)."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[C]:
        """One transaction: committed when the block ends, rolled back when it raises."""

    def ping(self) -> bool:
        """True when the database answers a trivial query; False (never an exception) if not."""
        try:
            with self.read() as conn:
                conn.execute("SELECT 1").fetchone()
        except self._error:
            return False
        return True

    @property
    @abstractmethod
    def closed(self) -> bool: ...

    @abstractmethod
    def close(self) -> None:
        """Close it; later calls raise ``error``. Closing twice is harmless."""
