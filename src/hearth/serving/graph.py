"""Assemble the serving graph from Settings: what each BentoML service holds.

The services in ``bentos/`` call one function here from their ``__init__`` and forward
requests; each piece loads in a background thread (`Background`), so a service answers
/livez at once and /readyz only when its store or model is loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hearth.config import HearthContext, Settings
from hearth.serving import workers
from hearth.serving.admin import Admin, AdminOps
from hearth.serving.bentoml_internals import worker_index
from hearth.serving.dependencies import (
    Background,
    LocalFeatures,
    LocalModel,
    RemoteFeatures,
    RemoteModel,
    RemoteVersions,
)
from hearth.serving.gateway import Gateway
from hearth.serving.internal_client import FeaturesCalls, InternalClient, ModelCalls
from hearth.serving.model_cache import RegistryCatalog
from hearth.serving.routing import RolloutRouter
from hearth.traffic.fleet import HeartbeatReporter
from hearth.traffic.follower import Follower
from hearth.traffic.heartbeat import LoadedVersion
from hearth.traffic.prediction_log import PredictionLog
from hearth.traffic.stores import open_prediction_log, open_state_store


def context() -> HearthContext:
    """Settings (environment) and Params, for a service process."""
    return HearthContext()


def feature_store(settings: Settings) -> Background[Any]:
    """The online store (SQLite, or Redis when configured), opened in the background."""

    def open_and_check() -> Any:
        from hearth.features.store import open_store  # lazy: pandas, where a store is opened

        store = open_store(settings)
        if not store.ping():
            raise ConnectionError(f"the {store.backend} online store does not answer")
        return store

    return Background("feature store", open_and_check)


# How long a model pool waits for the rollout state's first read before loading what it
# knows (nothing): a state store that is down at start must not keep the pool from trying.
FIRST_READ_WAIT_S = 10.0


def follower(ctx: HearthContext) -> Follower:
    """What serves, followed from the shared rollout state (SQLite or Redis, as the online
    store): the champion, a running rollout and its weight. Re-read by a thread of its own,
    so routing never waits on the store on the event loop."""
    p = ctx.params.rollout
    return Follower(open_state_store(ctx.settings), p.refresh_interval_s, p.buckets).start()


def model_pool(
    ctx: HearthContext, device: str | None = None, source: Follower | None = None
) -> Background[Any]:
    """The model pool, loading the versions the state names from the registry's local
    cache, in the background. `source`: a follower to share (the monolith's router's)."""

    def load() -> Any:
        # lazy: torch, loaded in the background thread, not at service import
        from hearth.serving.pool import ModelPool

        catalog = RegistryCatalog(ctx.settings, ctx.params.registry.model_name)
        shared = source or follower(ctx)
        shared.wait_first_read(FIRST_READ_WAIT_S)
        pool = ModelPool(catalog, shared, device=device)
        pool.reload()
        return pool

    return Background("model pool", load)


def prediction_log(settings: Settings) -> Background[PredictionLog]:
    """The log of every scoring attempt (SQLite, or PostgreSQL with HEARTH_DATABASE_URL),
    opened in the background."""
    return Background("prediction log", lambda: open_prediction_log(settings))


def rollout_router(
    ctx: HearthContext,
    source: Follower | None = None,
    pool: Background[Any] | None = None,
    loaded: Callable[[str], bool] | None = None,
) -> RolloutRouter:
    """Routing by the shared state: every route names the version that answers. With this
    process's `pool` (or `loaded`: what the model service holds), a challenger is routed to
    only once it is loaded."""

    def in_pool(version: str) -> bool:
        assert pool is not None
        return pool.ready and bool(pool.get().has(version))

    return RolloutRouter(source or follower(ctx), in_pool if pool is not None else loaded)


def heartbeat(ctx: HearthContext, router: RolloutRouter, role: str) -> HeartbeatReporter:
    """This process's heartbeat (its versions as `router` serves them), written into the
    shared state every `heartbeat_interval_s` from now on by a thread of its own."""

    def versions() -> dict[str, LoadedVersion]:
        ready = router.readiness()["versions"]
        return {variant: LoadedVersion(**v) for variant, v in ready.items()}

    return HeartbeatReporter(
        router.router.store,
        versions,
        role=role,
        home=str(ctx.settings.home_abs),
        interval_s=ctx.settings.heartbeat_interval_s,
    ).start()


def challenger_timeout_s(ctx: HearthContext) -> float:
    """A challenger answer later than the guard rails' hard latency limit is a failure."""
    return min(ctx.settings.model_timeout_s, ctx.params.rollout.max_p99_latency_ms / 1000)


def admin(gateway: Gateway, ops: Callable[[], AdminOps]) -> Admin:
    """The admin API over `ops` (injected by the orchestration layer: the rollout controls);
    after a change this gateway re-reads the state at once, and its status says which
    versions this process has loaded, which worker it is, and what every live process of
    the server has loaded (`hearth.serving.workers.process_view`)."""
    router = gateway.router
    readiness: Callable[[], dict[str, Any]] | None = getattr(router, "readiness", None)

    def serving() -> dict[str, Any]:
        assert readiness is not None
        return workers.process_view(readiness(), worker_index())

    return Admin(
        ops,
        on_change=getattr(router, "refresh", None),
        serving=serving if readiness is not None else None,
    )


def monolith(ctx: HearthContext) -> tuple[Gateway, Background[Any], Background[Any]]:
    """A gateway with the store and the model pool in this process; (gateway, store, pool)."""
    workers.pin_this_worker(ctx.settings.serve_pin_workers, worker_index())  # before threads
    shared = follower(ctx)  # the router and the pool follow one snapshot
    store, pool = feature_store(ctx.settings), model_pool(ctx, source=shared)
    timeout = ctx.settings.model_timeout_s
    router = rollout_router(ctx, shared, pool)
    heartbeat(ctx, router, "monolith")
    gateway = Gateway(
        LocalFeatures(store, timeout_s=timeout),
        LocalModel(pool, timeout_s=timeout),
        prediction_log(ctx.settings),
        router=router,
        challenger_model=LocalModel(pool, threaded=True, timeout_s=timeout),
        challenger_timeout_s=challenger_timeout_s(ctx),
        timeout_s=timeout,
    )
    return gateway, store, pool


def microservices_gateway(
    ctx: HearthContext, features_url: str, model_url: str
) -> tuple[Gateway, list[Any]]:
    """A gateway calling the features and model services at these URLs (`internal`'s hop),
    and its clients (to close at shutdown).

    Challenger items go to the model service's own `predict_challenger` lane: it batches
    on its own, so a slow challenger never sits in the champion's batch.
    """
    workers.pin_this_worker(ctx.settings.serve_pin_workers, worker_index())  # before threads
    timeout = ctx.settings.model_timeout_s
    token = ctx.settings.internal_token.get_secret_value()  # the services require it
    clients = [InternalClient(url, token=token) for url in (features_url, model_url)]
    features, model = FeaturesCalls(clients[0]), ModelCalls(clients[1])  # one pool per service
    remote_features = RemoteFeatures(features.observe, features.ready, timeout_s=timeout)
    remote_model = RemoteModel(model.predict, model.ready, timeout_s=timeout)
    remote_challenger = RemoteModel(model.predict_challenger, model.ready, timeout_s=timeout)
    loaded = RemoteVersions(model.versions, timeout_s=timeout)
    router = rollout_router(ctx, loaded=loaded.has)
    heartbeat(ctx, router, "gateway")
    gateway = Gateway(
        remote_features,
        remote_model,
        prediction_log(ctx.settings),
        router=router,
        challenger_model=remote_challenger,
        challenger_timeout_s=challenger_timeout_s(ctx),
        timeout_s=timeout,
    )
    return gateway, clients


def remote_urls() -> dict[str, str]:
    """Where remote features/model services are (Settings' URLs); empty: local dependencies."""
    s = Settings()
    urls = {"features": s.features_url, "model": s.model_url}
    return {name: url for name, url in urls.items() if url}
