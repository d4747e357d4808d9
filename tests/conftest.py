"""Fixtures for every test: they live in tests/support/ and are exposed here, so no test imports a fixture."""

from tests.support.fixtures import config_dir, demo_frames, instance, shared_drive  # noqa: F401
from tests.support.mlflow_store import mlflow_store_template  # noqa: F401 - autouse: one MLflow migration per session
from tests.support.postgres import pg_url  # noqa: F401
