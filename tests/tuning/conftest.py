"""Fixtures of the tuning tests: a fresh PostgreSQL database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from tests.tuning.tune_data import PG_URL


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh, empty PostgreSQL database (nothing of another test's study in it); its URL."""
    import psycopg

    name = f"mlsmith_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
