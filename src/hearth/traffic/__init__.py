"""Shared traffic state: which model versions serve, and what they answered.

The layer below `hearth.serving` and `hearth.rollout`, which never import each other: the
rollout state and its stores (`rollout_state`, `state_sqlite`, `state_redis`,
`state_postgres`, `stores`; PostgreSQL's tables in `migrations`),
sticky assignment of customers to variants (`assignment`), the snapshot every serving
process follows (`follower`), and the prediction/feedback log (`prediction_log`).
"""
