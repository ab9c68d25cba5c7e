"""Getting an MLflow tracking store ready without ever breaking it.

MLflow creates a SQL store's schema on first use by running about sixty Alembic migrations in
place, which is safe for one process and nothing else: processes that start together on a fresh
store run the migrations over each other ("duplicate column name", "table _alembic_tmp_...
already exists"), and a process killed while they run leaves a half-migrated store that every
later run refuses. So mlsmith never lets MLflow create a store where it will be used:

- SQLite (the default): the first process takes an exclusive lock beside the file, builds the
  store in a temporary file, and renames it into place; the others wait for the lock and find it
  ready. A kill at any point leaves either no store or a complete one (plus a temporary file the
  next write sweeps up). A store left incomplete by an older version, holding no runs, is moved
  aside and rebuilt; one holding runs is left alone with a message saying what to do.
- PostgreSQL: the same first use, serialised by a PostgreSQL advisory lock.
- An HTTP server: asked once, with a short timeout, whether it answers, so an unreachable server
  costs seconds, not minutes of retries; later requests get few, short retries for the same
  reason.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import sqlite3
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

from mlsmith.errors import describe_os_error
from mlsmith.files import (
    exclusive_lock,
    fsync_directory,
    sweep_stale_temporaries,
    temporary_path,
)

log = logging.getLogger(__name__)

# Seconds to wait for a server's first answer, and for a store another process is creating.
CONNECT_TIMEOUT_S = 3.0
CREATE_TIMEOUT_S = 120.0
# MLflow's defaults (7 retries with exponential backoff, 120 s timeouts) keep a run waiting for
# minutes when its server goes away mid-run; these bound one failing request to seconds. Set
# only where the user has not set them.
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
}
# An arbitrary constant: the PostgreSQL advisory lock every mlsmith process takes to create a
# store ("mlsmith" in ASCII).
PG_LOCK_KEY = 0x6D6C736D697468


class StoreUnavailable(Exception):
    """The store cannot be used; the message says why and what to do."""


def prepare_store(uri: str, artifact_root: Path) -> None:
    """Make the store at ``uri`` ready for MLflow (see the module docstring)."""
    if uri.startswith("sqlite:///"):
        prepare_sqlite(Path(uri[len("sqlite:///") :]), artifact_root)
    elif uri.startswith(("http://", "https://")):
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        check_server(uri)
    elif uri.startswith(("postgresql:", "postgresql+")):
        prepare_postgres(uri, artifact_root)


# --- SQLite -------------------------------------------------------------------------------------


def prepare_sqlite(db: Path, artifact_root: Path) -> None:
    """Create the SQLite store at ``db`` if needed: built aside, renamed into place, locked."""
    if _problem(db) is None:
        return  # the common case: a complete store, no lock taken
    try:
        with exclusive_lock(db.parent / f".{db.name}.lock", timeout=CREATE_TIMEOUT_S):
            problem = _problem(db)  # another process may have created it while we waited
            if problem is None:
                return
            if problem != "missing":
                _set_aside(db, problem)
            _build_sqlite(db, artifact_root)
    except OSError as exc:
        raise StoreUnavailable(f"cannot create {db}: {describe_os_error(exc)}") from None
    except TimeoutError as exc:
        raise StoreUnavailable(f"another process is still creating {db} ({exc})") from None


def _problem(db: Path) -> str | None:
    """None for a complete store; "missing"; or why the store at ``db`` is incomplete."""
    if not db.exists() or db.stat().st_size == 0:
        return "missing"
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
            tables = _tables(con)
            if "alembic_version" not in tables or "runs" not in tables:
                return "its schema was never completed"
            if any(t.startswith("_alembic_tmp_") for t in tables):
                return "a schema migration was interrupted"
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError as exc:
        return f"it is not a readable SQLite database ({exc})"
    revision = row[0] if row else None
    head, known = _schema_revisions()
    if revision != head and (revision is None or revision in known):
        # A revision MLflow knows but not its newest: creation stopped partway, or an older
        # MLflow made it. An unknown revision is a newer MLflow's: MLflow explains that itself.
        return f"its schema stopped at revision {revision}, before {head}"
    return None


def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _set_aside(db: Path, problem: str) -> None:
    """Move an incomplete store out of the way when it holds nothing; else refuse to touch it."""
    held = _contents(db)
    if held:
        raise StoreUnavailable(
            f"the MLflow store {db} is incomplete ({problem}) and holds {held}, so mlsmith leaves "
            f"it as it is: back it up, then run `mlflow db upgrade sqlite:///{db}`, or set "
            "track.uri to another store"
        )
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = db.with_name(f"{db.name}.incomplete-{stamp}")
    os.replace(db, aside)
    log.warning(
        "the MLflow store %s was incomplete (%s) and held no runs; moved it to %s and created "
        "a new one",
        db,
        problem,
        aside.name,
    )


def _contents(db: Path) -> str:
    """What of value a store holds ("3 runs"...), or "" for nothing."""
    held = []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)) as con:
            tables = _tables(con)
            for table, what in (("runs", "runs"), ("registered_models", "registered models")):
                if table in tables:
                    count = con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
                    if count:
                        held.append(f"{count} {what}")
    except sqlite3.DatabaseError:
        return ""  # not a database at all: nothing MLflow could read from it
    return ", ".join(held)


def _build_sqlite(db: Path, artifact_root: Path) -> None:
    """Run MLflow's schema creation on a temporary file, then rename it to ``db``."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    db.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(db.parent)  # what a process killed while building this one left
    tmp = temporary_path(db)
    try:
        store = SqlAlchemyStore(f"sqlite:///{tmp.as_posix()}", artifact_root.as_uri())
        # Close every connection before the rename: SQLite names its journal after the path a
        # connection opened, and nothing may write through the temporary name afterwards.
        store.engine.dispose()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, db)
        fsync_directory(db.parent)
    finally:
        for leftover in (tmp, tmp.with_name(tmp.name + "-journal")):
            leftover.unlink(missing_ok=True)
    log.info("created the MLflow store %s", db)


@functools.lru_cache(maxsize=1)
def _schema_revisions() -> tuple[str, frozenset[str]]:
    """The newest schema revision of the installed MLflow, and every revision it knows."""
    import mlflow
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory(str(Path(mlflow.__file__).parent / "store" / "db_migrations"))
    return scripts.get_current_head() or "", frozenset(r.revision for r in scripts.walk_revisions())


# --- PostgreSQL ---------------------------------------------------------------------------------


def prepare_postgres(uri: str, artifact_root: Path) -> None:
    """Let MLflow create (or check) the store while holding an advisory lock, one at a time."""
    from mlsmith.sql import missing_driver

    problem = missing_driver(uri, "a PostgreSQL tracking store")
    if problem:
        raise StoreUnavailable(problem)
    import sqlalchemy
    from mlflow import MlflowClient

    try:
        engine = sqlalchemy.create_engine(
            uri, poolclass=sqlalchemy.pool.NullPool, connect_args={"connect_timeout": 5}
        )
        with engine.connect() as connection:
            key = {"key": PG_LOCK_KEY}
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), key)
            try:
                # The first call creates the schema; MLflow caches the store for later clients.
                MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), key)
        engine.dispose()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StoreUnavailable(f"cannot use the PostgreSQL store: {reason}") from None


# --- HTTP ---------------------------------------------------------------------------------------


def check_server(uri: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise StoreUnavailable unless something answers HTTP at ``uri`` within ``timeout``."""
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError:
        return  # it answered (a proxy's 401, an old server's 404): requests will say more
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StoreUnavailable(
            f"no MLflow server answers at {uri} within {timeout:.0f} s ({reason})"
        ) from None
