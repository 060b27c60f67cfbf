"""In-process brokers for the group service's shell tests (the server tests' fixture)."""

from tests.unit.server.conftest import start_broker  # noqa: F401 - fixture, by import
