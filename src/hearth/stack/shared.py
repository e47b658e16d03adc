"""`hearth up --shared`: PostgreSQL and Redis beside the stack; `--join`: a second machine.

A shared stack keeps everything that must be the same on every machine in servers: the
rollout state, the heartbeats and the prediction log in PostgreSQL (`HEARTH_DATABASE_URL`),
the online features in Redis, MLflow's tracking and registry in PostgreSQL with the model
files served by MLflow itself, and Prefect's database in PostgreSQL. `hearth up --shared`
starts a local PostgreSQL (a cluster initialised under ``HEARTH_HOME/postgres``; as root it
runs as the unprivileged ``postgres`` user, else ``nobody``: PostgreSQL refuses root) and a
local Redis (``HEARTH_HOME/redis``), each with a generated password from the secrets file;
or, when Settings already name a PostgreSQL (`HEARTH_DATABASE_URL`) or a Redis
(`HEARTH_STORE_BACKEND=redis` + `HEARTH_REDIS_URL`) elsewhere, uses those.

It then writes ``HEARTH_HOME/join.env`` (mode 0600): the servers' URLs as other machines
reach them, and the secrets. `hearth up --join join.env` on another machine records them in
that machine's home and starts only a serving process and a Prefect worker there.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from hearth.config import Settings, is_loopback
from hearth.secrets_file import read_secrets, shared_variables, write_secrets
from hearth.stack.process import StackError

DB_USER = "hearth"  # PostgreSQL role of `hearth up --shared`'s cluster (its superuser)
HEARTH_DB, MLFLOW_DB, PREFECT_DB = "hearth", "mlflow", "prefect"
JOIN_FILE = "join.env"
POSTGRES_DIR = "postgres"
REDIS_DIR = "redis"


# -- addresses ------------------------------------------------------------------------------
def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def client_host(bind: str) -> str:
    """Where this machine's own clients reach a server bound to `bind`."""
    return "127.0.0.1" if _wildcard(bind) else bind


def advertised_host(bind: str) -> str:
    """Where other machines reach a server bound to `bind` (the machine's name for 0.0.0.0)."""
    return socket.getfqdn() if _wildcard(bind) else bind


def with_host(url: str, host: str) -> str:
    """`url` with its host replaced (user, password and port kept)."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{userinfo}@{host}{port}" if userinfo else f"{host}{port}"
    del hostport
    return urlunsplit(parts._replace(netloc=netloc))


def database_sibling(url: str, database: str) -> str:
    """`url` naming another database on the same server."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


def driver_url(url: str, driver: str) -> str:
    """A ``postgresql://`` URL with SQLAlchemy's `driver` (``psycopg``, ``asyncpg``)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return f"postgresql+{driver}://" + url.removeprefix(scheme)
    return url


def _secret(settings: Settings, name: str) -> str:
    value = getattr(settings, name)
    if value is None:
        raise StackError(f"HEARTH_{name.upper()} is not set: run `hearth secrets`")
    return str(value.get_secret_value())


@dataclass(frozen=True)
class SharedServers:
    """The databases and the Redis of a shared stack, as this machine reaches them; `own_*`:
    whether `hearth up --shared` runs them (else they run elsewhere)."""

    database_url: str  # Hearth's own tables
    mlflow_database_url: str
    prefect_database_url: str
    redis_url: str
    own_postgres: bool
    own_redis: bool


def own_database_url(settings: Settings, host: str | None = None) -> str:
    password = quote(_secret(settings, "postgres_password"), safe="")
    where = host or client_host(settings.postgres_host)
    return f"postgresql://{DB_USER}:{password}@{where}:{settings.postgres_port}/{HEARTH_DB}"


def own_redis_url(settings: Settings, host: str | None = None) -> str:
    password = quote(_secret(settings, "redis_password"), safe="")
    return f"redis://:{password}@{host or client_host(settings.redis_host)}:{settings.redis_port}/0"


def shared_servers(settings: Settings) -> SharedServers:
    """Where the shared stack's databases and Redis are: the local ones `hearth up
    --shared` runs, unless Settings name others."""
    own_db = own_database_url(settings)
    db = settings.database_url or own_db
    own_redis = own_redis_url(settings)
    external_redis = settings.store_backend == "redis" and settings.redis_url != own_redis
    if db == own_db:
        mlflow_db, prefect_db = database_sibling(db, MLFLOW_DB), database_sibling(db, PREFECT_DB)
    else:  # a server elsewhere: MLflow's and Prefect's databases beside Hearth's
        name = urlsplit(db).path.lstrip("/") or HEARTH_DB
        mlflow_db = database_sibling(db, f"{name}_{MLFLOW_DB}")
        prefect_db = database_sibling(db, f"{name}_{PREFECT_DB}")
    return SharedServers(
        database_url=db,
        mlflow_database_url=mlflow_db,
        prefect_database_url=prefect_db,
        redis_url=settings.redis_url if external_redis else own_redis,
        own_postgres=db == own_db,
        own_redis=not external_redis,
    )


# -- PostgreSQL -----------------------------------------------------------------------------
def postgres_bin() -> Path | None:
    """The folder of initdb/postgres: on PATH, else Debian's newest /usr/lib/postgresql/N/bin."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres"):
        return Path(initdb).parent
    found = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists()]
    numbered = [p for p in found if p.parent.name.isdigit()]
    return max(numbered, key=lambda p: int(p.parent.name)) if numbered else None


def run_as() -> str | None:
    """The unprivileged user PostgreSQL runs as when we are root (None: as ourselves)."""
    if os.geteuid() != 0:
        return None
    for user in ("postgres", "nobody"):
        try:
            pwd.getpwnam(user)
            return user
        except KeyError:
            continue
    raise StackError("running as root, and neither a `postgres` nor a `nobody` user exists")


def _as_user(cmd: list[str]) -> list[str]:
    user = run_as()
    if user is None:
        return cmd
    if shutil.which("runuser") is None:
        raise StackError("running as root without runuser: cannot start PostgreSQL unprivileged")
    return ["runuser", "-u", user, "--", *cmd]


def postgres_data(settings: Settings) -> Path:
    return settings.home_abs / POSTGRES_DIR / "data"


def prepare_postgres(settings: Settings) -> None:
    """Initialise the cluster under HEARTH_HOME unless it is there: the role `hearth` with
    the generated password, password (SCRAM) authentication, and from beyond loopback when
    bound there."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise StackError(
            "PostgreSQL is not installed (`make system-deps`, or apt-get install postgresql); "
            "or set HEARTH_DATABASE_URL to one that runs elsewhere"
        )
    data = postgres_data(settings)
    if (data / "PG_VERSION").exists():
        return
    data.mkdir(parents=True, exist_ok=True)
    user = run_as()
    pwfile = data.parent / ".initdb-password"
    pwfile.write_text(_secret(settings, "postgres_password") + "\n")
    pwfile.chmod(0o600)
    if user is not None:
        for path in (data.parent, data, pwfile):
            shutil.chown(path, user=user)
    try:
        done = subprocess.run(
            _as_user([str(bin_dir / "initdb"), "-D", str(data), "-U", DB_USER,
                      "--pwfile", str(pwfile), "-A", "scram-sha-256", "-E", "UTF8",
                      "--locale=C", "--no-instructions"]),
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
    finally:
        pwfile.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        hint = ""
        if user is not None and "Permission denied" in done.stderr:
            hint = (
                f" ({user} must be able to reach {data}: make the folders above it "
                "traversable, chmod o+x, or choose another HEARTH_HOME)"
            )
        raise StackError(f"initdb failed{hint}:\n{done.stderr[-2000:]}")
    if not is_loopback(settings.postgres_host):
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")


def postgres_command(settings: Settings) -> list[str]:
    bin_dir = postgres_bin()
    assert bin_dir is not None  # prepare_postgres checked
    host = settings.postgres_host
    listen = "*" if _wildcard(host) else host
    return _as_user([
        str(bin_dir / "postgres"), "-D", str(postgres_data(settings)),
        "-p", str(settings.postgres_port), "-c", f"listen_addresses={listen}",
        "-c", "unix_socket_directories=",  # TCP only: no socket path to share or outgrow
    ])  # fmt: skip


def postgres_answers(url: str) -> bool:
    import psycopg  # lazy: only a shared stack needs it at start-up

    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


def create_databases(servers: SharedServers) -> list[str]:
    """Create Hearth's, MLflow's and Prefect's databases where missing; the ones created."""
    import psycopg  # lazy: see postgres_answers
    from psycopg import sql

    urls = (servers.database_url, servers.mlflow_database_url, servers.prefect_database_url)
    names = [urlsplit(u).path.lstrip("/") for u in urls]
    made = []
    maintenance = database_sibling(servers.database_url, "postgres")
    try:
        with psycopg.connect(maintenance, autocommit=True, connect_timeout=5) as conn:
            for name in names:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if exists.fetchone() is None:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    made.append(name)
    except psycopg.Error as exc:
        raise StackError(
            f"cannot create the databases {', '.join(names)} ({exc}); create them, or give "
            "HEARTH_DATABASE_URL's user the CREATEDB privilege"
        ) from None
    return made


# -- Redis ----------------------------------------------------------------------------------
def redis_command(settings: Settings) -> list[str]:
    """redis-server with a configuration file under HEARTH_HOME (mode 0600: it holds the
    password), its snapshots there too."""
    server = shutil.which("redis-server")
    if server is None:
        raise StackError(
            "redis-server is not installed (`make system-deps`, or apt-get install "
            "redis-server); or set HEARTH_STORE_BACKEND=redis and HEARTH_REDIS_URL to one "
            "that runs elsewhere"
        )
    folder = settings.home_abs / REDIS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    conf = folder / "redis.conf"
    conf.touch(mode=0o600)
    conf.chmod(0o600)
    bind = "* -::*" if _wildcard(settings.redis_host) else settings.redis_host
    conf.write_text(
        f"bind {bind}\nport {settings.redis_port}\n"
        f"requirepass {_secret(settings, 'redis_password')}\n"
        f'dir {folder}\nsave 60 100\nappendonly no\nprotected-mode no\ndaemonize no\nlogfile ""\n'
    )
    return [server, str(conf)]


def redis_answers(url: str) -> bool:
    import redis  # lazy: see postgres_answers

    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


# -- joining --------------------------------------------------------------------------------
SECRETS_TO_SHARE = (
    "HEARTH_API_KEY",
    "HEARTH_ADMIN_TOKEN",
    "HEARTH_INTERNAL_TOKEN",
    "HEARTH_MLFLOW_ADMIN_PASSWORD",
    "HEARTH_PREFECT_AUTH_STRING",
)


def join_values(
    settings: Settings, servers: SharedServers, mlflow: str, prefect: str
) -> dict[str, str]:
    """What another machine needs: the servers' URLs as it reaches them, and the secrets."""

    def seen_from_afar(url: str, bind: str, own: bool) -> str:
        return with_host(url, advertised_host(bind)) if own else url

    known = read_secrets(settings.home_abs / "secrets.env")
    values = {
        "HEARTH_DATABASE_URL": seen_from_afar(
            servers.database_url, settings.postgres_host, servers.own_postgres
        ),
        "HEARTH_STORE_BACKEND": "redis",
        "HEARTH_REDIS_URL": seen_from_afar(
            servers.redis_url, settings.redis_host, servers.own_redis
        ),
        "HEARTH_MLFLOW_TRACKING_URI": with_host(mlflow, advertised_host(settings.mlflow_host)),
        "HEARTH_PREFECT_API_URL": with_host(prefect, advertised_host(settings.prefect_host)),
    }
    values.update({k: known[k] for k in SECRETS_TO_SHARE if k in known})
    return values


def write_join_file(home: Path, values: dict[str, str]) -> Path:
    path = home / JOIN_FILE
    write_secrets(path, values)
    return path


def read_join_file(path: Path) -> dict[str, str]:
    """The variables of a join file; StackError when it is missing or lacks a server."""
    values = read_secrets(path)
    if not values:
        raise StackError(f"{path}: no join file there (`hearth up --shared` writes join.env)")
    missing = [v for v in shared_variables() if v not in values]
    if missing:
        raise StackError(f"{path} lacks {', '.join(missing)}: not a join file")
    return values


def loopback_servers(values: dict[str, str]) -> list[str]:
    """The servers of a join file that only this machine could reach (bound to loopback)."""
    out = []
    for var in ("HEARTH_DATABASE_URL", "HEARTH_REDIS_URL", "HEARTH_MLFLOW_TRACKING_URI",
                "HEARTH_PREFECT_API_URL"):  # fmt: skip
        host = urlsplit(values.get(var, "")).hostname
        if host and is_loopback(host):
            out.append(var)
    return out
