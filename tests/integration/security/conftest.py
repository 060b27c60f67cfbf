"""Fixtures for the security tests: a real `broker serve --auth scram --super-user admin`."""

from collections.abc import Iterator

import pytest

from client.embedded import EmbeddedBroker
from client.pytest_plugin import (  # noqa: F401 - fixtures and the report hook, by import
    pytest_runtest_makereport,
    run_broker,
    unique_topic,
)

ADMIN_PASSWORD = "admin-secret"
AUTH_ARGS = ["--auth", "scram", "--super-user", "admin"]
AUTH_ENV = {"BROKER_ADMIN_PASSWORD": ADMIN_PASSWORD}
ADMIN = {
    "security_protocol": "SASL_PLAINTEXT",
    "sasl_username": "admin",
    "sasl_password": ADMIN_PASSWORD,
}


@pytest.fixture(scope="module")
def auth_broker(request: pytest.FixtureRequest) -> Iterator[EmbeddedBroker]:
    """One broker with SCRAM on, shared by a module's tests (use unique user and topic names)."""
    yield from run_broker(request, extra_args=AUTH_ARGS, env=AUTH_ENV)
