"""Where a study lives: an Optuna RDB storage with heartbeats, and one lock across processes.

SQLite by default (``<output_dir>/<experiment>/optuna.db``), PostgreSQL to share a study between
machines. Every process of a study runs trials with a heartbeat, so a process that dies
(``kill -9``, a lost machine) leaves a trial whose heartbeat goes stale after ``GRACE_S``.

The lock serialises what must happen once however many processes start together: creating the
schema and the study, topping up the trial queue, claiming a trial, creating the MLflow parent
run. On SQLite it is a file lock beside the database, on PostgreSQL an advisory lock; the kernel
or the server releases either when its holder dies, so ``kill -9`` never leaves it held.
"""

from __future__ import annotations

import logging
import threading
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith.errors import ConfigError
from mlsmith.files import exclusive_lock
from mlsmith.sql import missing_driver

if TYPE_CHECKING:
    import optuna

    from mlsmith.config import Config

log = logging.getLogger(__name__)

# A running trial records a heartbeat every HEARTBEAT_S; one silent for GRACE_S is stale: its
# process died.
HEARTBEAT_S = 2
GRACE_S = 10
# Holders keep the lock for milliseconds; a long wait means a store that hardly answers.
LOCK_TIMEOUT_S = 600.0
# An arbitrary constant ("mlsmtune", a positive bigint): the PostgreSQL advisory lock of
# mlsmith's Optuna studies (the tracking store takes another).
PG_LOCK_KEY = 0x6D6C_736D_7475_6E65


@dataclass
class StudyStorage:
    """An open study storage: ``backend`` for Optuna calls, ``lock()`` across processes."""

    url: str
    backend: optuna.storages.BaseStorage

    def lock(self) -> AbstractContextManager[None]:
        """Hold the storage's lock (not re-entrant: never take it twice in one process)."""
        return storage_lock(self.url)


def default_storage(cfg: Config) -> str:
    """The SQLite study storage beside the experiment's runs."""
    return f"sqlite:///{(Path(cfg.output_dir) / cfg.experiment / 'optuna.db').as_posix()}"


@contextmanager
def open_storage(
    url: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S
) -> Iterator[StudyStorage]:
    """Open the storage at ``url`` (creating its schema once, under the lock) with heartbeats;
    its database connections are closed on leaving the block."""
    import optuna

    problem = missing_driver(url, "a PostgreSQL study")
    if problem:
        raise ConfigError(problem)
    database = _sqlite_path(url)
    if database is not None:
        database.parent.mkdir(parents=True, exist_ok=True)
    for name in ("alembic.runtime.migration", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        # Processes starting together would each create the schema, and all but one fail.
        with storage_lock(url), warnings.catch_warnings():
            # Heartbeats are "experimental" in Optuna since v2.9; they are how stale trials end.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(
                url, heartbeat_interval=heartbeat_s, grace_period=grace_s
            )
    except Exception as error:  # a wrong URL, an unreachable server
        raise ConfigError(f"--storage {url}: cannot open the study storage: {error}") from None
    try:
        # One caching wrapper for every Study of this process: each wrapper only knows the
        # trials it has read, and Optuna would wrap the RDBStorage anew for every Study.
        yield StudyStorage(url, optuna.storages.get_storage(rdb))
    finally:
        rdb.remove_session()
        rdb.engine.dispose()


def storage_lock(url: str) -> AbstractContextManager[None]:
    """The lock of the storage at ``url``, across processes and machines.

    Other databases than SQLite and PostgreSQL get none: there, two leaders starting at the same
    instant may queue the budget twice.
    """
    database = _sqlite_path(url)
    if database is not None:
        return exclusive_lock(database.parent / f".{database.name}.lock", timeout=LOCK_TIMEOUT_S)
    if url.split(":", 1)[0].partition("+")[0] == "postgresql":
        return _advisory_lock(url)
    log.debug("no cross-process lock for %s", url.split(":", 1)[0])
    return nullcontext()


@contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    import sqlalchemy

    # A connection of its own, closed on leaving: closing it releases the lock even when the
    # block ends in an error that would make an explicit unlock fail.
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            lock = sqlalchemy.text("SELECT pg_advisory_lock(:key)")
            connection.execute(lock, {"key": PG_LOCK_KEY})
            yield
    finally:
        engine.dispose()


def _sqlite_path(url: str) -> Path | None:
    """The database file of a ``sqlite:///`` URL; None for other URLs and in-memory SQLite."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


@contextmanager
def heartbeat(storage: Any, trial_id: int) -> Iterator[None]:
    """Record the trial's heartbeat every HEARTBEAT_S seconds while the block runs.

    ``storage`` is Optuna's RDB storage (or its caching wrapper), both heartbeat-capable.
    """
    storage.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a missed beat only risks a late FAIL
                log.debug("heartbeat failed", exc_info=True)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
