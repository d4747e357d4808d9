"""A new MLflow SQLite store, made once per test session and copied wherever MLflow would make one.

MLflow makes a new SQLite tracking store by running all its Alembic migrations: about 4 s of CPU and a
thousand fsyncs, in every test that writes MLflow to a fresh drive (a few dozen of them). The result
depends only on the installed MLflow, so the session's first new store is made by MLflow itself (into a
template file) and every later one is a copy of that file (SQLite's backup API). Postgres and tracking
servers are left to MLflow, and so are subprocesses (the CLI, trainers, daemon runs): they make their
stores as in production. tests/conftest.py turns this on for every test.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def mlflow_store_template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    try:
        from mlflow.store.db import utils
        from mlflow.store.model_registry import sqlalchemy_store as registry
    except ImportError:  # not installed: nothing to speed up
        yield
        return
    original = utils._initialize_tables
    template = tmp_path_factory.mktemp("mlflow-store") / "mlflow.db"
    lock = threading.Lock()

    def initialize_tables(engine) -> None:
        database = engine.url.database
        if engine.dialect.name != "sqlite" or not database or database == ":memory:" or "mode=memory" in database:
            original(engine)
            return
        with lock:
            if not template.exists():
                partial = template.with_name("partial.db")
                scratch = utils.create_sqlalchemy_engine(f"sqlite:///{partial}")
                try:
                    original(scratch)
                finally:
                    scratch.dispose()
                partial.rename(template)
        with (
            contextlib.closing(sqlite3.connect(template)) as source,
            contextlib.closing(sqlite3.connect(Path(database))) as target,
        ):
            source.backup(target)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(utils, "_initialize_tables", initialize_tables)
        # The registry store imported the function by name.
        if getattr(registry, "_initialize_tables", None) is original:
            mp.setattr(registry, "_initialize_tables", initialize_tables)
        yield
