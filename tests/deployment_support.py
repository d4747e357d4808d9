"""Moved to tests/support/deployment.py (the `demo_frames` fixture to tests/support/fixtures.py).

Kept only for tests/serving_support.py, which is being refactored separately and still imports
`export_current` from here; delete this file once it imports from tests.support.deployment.
"""

from tests.support.deployment import export_current

__all__ = ["export_current"]
