"""The Spark session a prediction runs in, and what it needs set up around the job: the package
among the job's files, Arrow batches of ``chunk_rows``, the executor code shipped by value, and
quiet logs for failures the job's own exception reports.
"""

from __future__ import annotations

import atexit
import secrets
import shutil
import signal
import tempfile
import threading
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlsmith.errors import ConfigError, MlsmithError
from mlsmith.spark import executor

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

# Rows per Arrow batch handed to the package: ``chunk_rows``, as the local engine reads them.
ARROW_BATCH_ROWS = "spark.sql.execution.arrow.maxRecordsPerBatch"
# Spark's loggers that print a failed task's error, Python traceback and Java stack included,
# before the job's own exception reaches predict, which reports it (a bad row: one line).
TASK_FAILURE_LOGGERS = (
    "org.apache.spark.executor.Executor",
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.sql.execution.datasources.FileFormatWriter",
    # Its "Aborting task" (the same error again); what else it logs comes at start-up, before.
    "org.apache.spark.util.Utils",
)


def ship_by_value() -> None:
    """Have cloudpickle send :mod:`mlsmith.spark.executor`'s code inside the job rather than a
    reference executors would resolve by importing mlsmith, which they do not have."""
    from pyspark import cloudpickle

    cloudpickle.register_pickle_by_value(executor)


@contextmanager
def pandas_version_warnings_off() -> Iterator[None]:
    """Silence pyspark's warning about pandas 3 for the ``with`` block."""
    with warnings.catch_warnings():
        # pyspark 4 warns on every pandas conversion that it does not yet "fully support"
        # pandas 3. Only plain numbers, text and booleans cross here, and the tests hold the
        # results equal to the local engine's under pandas 3.
        warnings.filterwarnings(
            "ignore", message="PySpark does not yet fully support pandas", category=FutureWarning
        )
        yield


@contextmanager
def session(
    master: str | None, conf: Mapping[str, str] | None
) -> Iterator[tuple[SparkSession, bool]]:
    """The Spark session to run on and whether it was started here (then it is stopped at the
    end). A session already running in this process is used as it is."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        running = active.sparkContext.master
        if master and master != running:
            raise ConfigError(
                f"--spark-master {master}: this process already runs a Spark session on "
                f"'{running}', which predict uses; omit --spark-master or stop that session"
            )
        if conf:
            raise ConfigError(
                "--spark-conf: this process already runs a Spark session, which predict uses "
                "as it is; set the options on that session"
            )
        yield active, False
        return
    builder = SparkSession.builder.appName("mlsmith predict")
    if master:
        builder = builder.master(master)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    # pyspark replaces the SIGINT handler (Ctrl-C cancels its jobs); mlsmith's comes back after.
    main_thread = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        spark = builder.getOrCreate()
    except PySparkException as error:
        if error.getCondition() == "JAVA_GATEWAY_EXITED":
            raise MlsmithError(
                "Spark could not start its Java process: --engine spark needs Java 17 or 21 "
                "(set JAVA_HOME, or put java on the PATH)"
            ) from None
        raise ConfigError(f"Spark could not start: {_first_line(error)}") from None
    except Py4JError as error:  # Spark's own errors, e.g. a master URL it cannot parse
        where = f" with --spark-master {master}" if master else ""
        raise ConfigError(f"Spark could not start{where}: {_java_message(error)}") from None
    quiet_task_failures(spark)
    try:
        yield spark, True
    finally:
        spark.stop()
        if handler is not None:
            signal.signal(signal.SIGINT, handler)


def quiet_task_failures(spark: SparkSession) -> None:
    """Turn off :data:`TASK_FAILURE_LOGGERS` in a session started here (a session the caller
    runs keeps its logging). A failure is not lost: the job's exception carries it."""
    context: Any = spark.sparkContext
    log4j = context._jvm.org.apache.logging.log4j
    for name in TASK_FAILURE_LOGGERS:
        log4j.core.config.Configurator.setLevel(name, log4j.Level.OFF)


@contextmanager
def staged(package: Path, *, remove: bool) -> Iterator[Path]:
    """A copy of the package under a name of its own, for the job's files: Spark keys them by
    name for the session's life, and the copy cannot change under a running job."""
    scratch = Path(tempfile.mkdtemp(prefix="mlsmith-spark-"))
    copy = scratch / f"mlsmith-package-{secrets.token_hex(6)}"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    try:
        yield copy
    finally:
        if remove:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            # A session that outlives this call may still hand the file to executors it starts
            # later: the copy stays until this process ends.
            atexit.register(shutil.rmtree, scratch, ignore_errors=True)


@contextmanager
def arrow_batch_rows(spark: SparkSession, rows: int) -> Iterator[None]:
    """Hand the package ``rows`` rows per Arrow batch for the ``with`` block, then restore the
    session's own setting."""
    previous = spark.conf.get(ARROW_BATCH_ROWS, None)
    spark.conf.set(ARROW_BATCH_ROWS, str(rows))
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(ARROW_BATCH_ROWS)
        else:
            spark.conf.set(ARROW_BATCH_ROWS, previous)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _java_message(error: BaseException) -> str:
    """The Java exception's own message out of py4j's text (which starts with its own words)."""
    java = getattr(error, "java_exception", None)
    if java is not None:
        return str(java.getMessage())
    return _first_line(error)
