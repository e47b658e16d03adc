"""Hearth's own tables in PostgreSQL, as numbered migrations (`hearth.storage.postgres`).

Every store on PostgreSQL opens its database with all of `MIGRATIONS`, so whichever opens a
new database first creates every table, and each is recorded once in ``hearth_migrations``.
A change of schema is a new migration at the end of the list; an applied one never changes
(its name is checked). The tables live in the ``hearth`` schema; their columns are the SQLite
backends' (`hearth.traffic.state_sqlite`, `hearth.traffic.prediction_log`), so both backends
answer the same queries alike.
"""

from __future__ import annotations

from hearth.storage.postgres import Migration

ROLLOUT_STATE = Migration(
    1,
    "rollout state",
    """
    -- One row: what serves (the champion, the latest rollout's JSON document, the revision)
    -- and the pending registry change. Every write locks it (SELECT ... FOR UPDATE) first.
    CREATE TABLE rollout_served (
        id       INTEGER PRIMARY KEY CHECK (id = 1),
        revision BIGINT NOT NULL DEFAULT 0,
        state    TEXT,
        champion TEXT,
        intent   TEXT
    );
    INSERT INTO rollout_served (id) VALUES (1);
    CREATE TABLE rollout_history (
        seq        BIGSERIAL PRIMARY KEY,
        rollout_id TEXT NOT NULL,
        event      TEXT NOT NULL
    );
    CREATE INDEX rollout_history_id ON rollout_history (rollout_id, seq);
    """,
)

PREDICTION_LOG = Migration(
    2,
    "prediction log",
    """
    CREATE TABLE predictions (
        transaction_id TEXT NOT NULL,
        request_id     TEXT NOT NULL,
        variant        TEXT NOT NULL,
        model_version  TEXT NOT NULL,
        score          DOUBLE PRECISION,
        decision       TEXT,
        at             DOUBLE PRECISION NOT NULL,
        features       TEXT,
        customer_id    TEXT,
        rollout_id     TEXT,
        latency_ms     DOUBLE PRECISION,
        ok             INTEGER NOT NULL DEFAULT 1,
        shadow         INTEGER NOT NULL DEFAULT 0,
        seq            BIGSERIAL PRIMARY KEY
    );
    CREATE INDEX predictions_tx ON predictions (transaction_id);
    CREATE INDEX predictions_rollout ON predictions (rollout_id, at);
    CREATE TABLE feedback (
        transaction_id TEXT NOT NULL,
        is_fraud       INTEGER NOT NULL,
        at             DOUBLE PRECISION NOT NULL,
        seq            BIGSERIAL PRIMARY KEY
    );
    CREATE INDEX feedback_tx ON feedback (transaction_id);
    """,
)

SERVING_HEARTBEATS = Migration(
    3,
    "serving heartbeats",
    """
    -- The last heartbeat of each serving process (hearth.traffic.heartbeat), by "host:pid".
    CREATE TABLE serving_heartbeats (
        process   TEXT PRIMARY KEY,
        seen_at   DOUBLE PRECISION NOT NULL,
        heartbeat TEXT NOT NULL
    );
    """,
)

MIGRATIONS = (ROLLOUT_STATE, PREDICTION_LOG, SERVING_HEARTBEATS)
