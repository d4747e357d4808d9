"""What the tests share, in one place.

- wait.py        `wait_for`: poll a condition with a deadline; the timeout names what was awaited
- instance.py    `dagster_instance` (ephemeral, or on a DAGSTER_HOME; experiments registered) and
                 `write_instance_config` (the dagster.yaml a real daemon runs on)
- fixtures.py    shared_drive, config_dir, instance, demo_frames (tests/conftest.py exposes them to every test)
- postgres.py    the local PostgreSQL server and the `pg_url` fixture
- daemon.py      a real `dagster-daemon run` on a temporary DAGSTER_HOME (`DagsterDaemon`)
- deployment.py  a promoted champion fitted on small demo data, and a broken export
- slurm/         the real local Slurm cluster: harness.py, and defs.py (a test-only code location)
"""

from tests.support.instance import dagster_instance
from tests.support.wait import wait_for

__all__ = ["dagster_instance", "wait_for"]
