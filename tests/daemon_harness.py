"""Moved to tests/support/ (daemon.py, instance.py, wait.py).

Kept only for tests/serving_support.py, which is being refactored separately and still imports `wait_for`
from here; delete this file once it imports `from tests.support import wait_for`.
"""

from tests.support.wait import wait_for

__all__ = ["wait_for"]
