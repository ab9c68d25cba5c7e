"""SQL database URLs, shared by tracking (MLflow) and tuning (Optuna): which driver one needs.

A bare ``postgresql://`` URL means psycopg 3 to SQLAlchemy 2.1, and so to MLflow, Optuna and
their own servers and dashboards; the ``[postgres]`` extra installs exactly that driver, so one
URL works in all of them.
"""

from __future__ import annotations

import importlib.util

# SQLAlchemy's PostgreSQL drivers ("postgresql+<driver>://") and the module each imports.
_POSTGRES_DRIVERS = {
    "": "psycopg",
    "psycopg": "psycopg",
    "psycopg2": "psycopg2",
    "pg8000": "pg8000",
}


def missing_driver(url: str, purpose: str) -> str | None:
    """Why ``url`` cannot be opened for ``purpose`` ("a PostgreSQL study"...), naming what to
    install; None when its driver is installed or it needs none."""
    dialect, _, driver = url.split(":", 1)[0].partition("+")
    if dialect != "postgresql":
        return None
    module = _POSTGRES_DRIVERS.get(driver, driver)
    if importlib.util.find_spec(module) is not None:
        return None
    if module == "psycopg":
        return (
            f"{purpose} needs the 'psycopg' driver, which is not installed. "
            "Install it with: pip install 'mlsmith[postgres]'"
        )
    return (
        f"{purpose} needs the '{module}' driver that {url.split('://')[0]}:// names, which is not "
        "installed: install it, or write postgresql:// and pip install 'mlsmith[postgres]'"
    )
