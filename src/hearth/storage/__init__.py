"""Storage plumbing shared by Hearth's state stores (core layer: imports nothing of Hearth).

- `hearth.storage.database`: `Database`, what the two SQL wrappers below share (`read`,
  `transaction`, `ping`, `close`), so a store can be written once for both;
- `hearth.storage.sqlite`: `SQLiteFile`, one SQLite state file (WAL, busy timeout, one
  locked connection, ``BEGIN IMMEDIATE`` transactions, errors in the caller's type);
- `hearth.storage.redis`: `connect` (a client that fails fast) and `compare_and_set`
  (WATCH, read, compute, MULTI/EXEC, retried on conflict), errors in the caller's type;
- `hearth.storage.postgres`: `PostgresDatabase`, one PostgreSQL database (a psycopg 3
  connection pool, transactions, numbered migrations applied under an advisory lock),
  errors in the caller's type.

They are separate modules so that a SQLite-only process never loads redis-py or psycopg.
"""
