"""Fixtures for the CLI integration tests: the package's own pytest plugin (a real broker per
session or per test), imported as tests/integration/client/conftest.py does."""

from client.pytest_plugin import (  # noqa: F401 - fixtures and the report hook, by import
    broker,
    pytest_runtest_makereport,
    session_broker,
    unique_topic,
)
