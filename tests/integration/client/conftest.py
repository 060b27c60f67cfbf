"""Fixtures for the client integration tests: the package's own pytest plugin.

Imported rather than listed in `pytest_plugins` (only allowed in the root conftest); once the
`pytest11` entry point is installed the plugin is active everywhere and this import is harmless.
"""

from client.pytest_plugin import (  # noqa: F401 - fixtures and the report hook, by import
    broker,
    pytest_runtest_makereport,
    session_broker,
    unique_topic,
)
from tests.integration.client.fake_broker import fake  # noqa: F401 - the fake broker fixture
