"""`broker-cli` waits for the cluster before a command talks to it.

A script that starts brokers in the background and runs `broker-cli` at once (the README's
three-broker section) reaches them before they listen, or before the controller has elected a
leader and the brokers have registered with it. Instead of failing, the CLI asks for the cluster's
status, retrying with backoff up to `--wait-timeout` seconds (a spinner on stderr when it is a
terminal), and gives up with one line that names the addresses and the last reason.

"Ready" is decided from one `ClusterStatus` answer (pure functions): the controller has a leader,
every controller voter has registered as a broker, and the internal topics the brokers create
once they have registered exist (`not_ready_reason`; without that last check a probe between
the registrations and those creations said ready, and the command then met the new topics'
partitions still electing). Then, while every
broker is active, partitions without a leader are being elected (the internal topics' partitions
elect theirs a second or two after the brokers register; until then group and transaction
commands fail), so they are waited for too, up to `ELECTION_WAIT_S` (`electing_reason`). The wait
is for a cluster that is forming or electing, never for one that is degraded: a broker that died
stays registered but fenced, which makes the cluster ready at once. A single-node broker is ready
as soon as it answers.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Unpack

import trio

from client._bootstrap import format_addresses, parse_bootstrap
from client.aio import AdminClient
from client.errors import (
    BrokerUnavailableError,
    ClientError,
    ConnectionLostError,
    RequestTimedOutError,
    TlsHandshakeError,
)
from client.security import SecurityOptions
from wire import codec
from wire.error_codes import BrokerError

# `ClusterBroker.state` of a broker that is up and trusted to serve.
ACTIVE = "active"
# How long `broker-cli` waits for the cluster unless `--wait-timeout` says otherwise.
WAIT_TIMEOUT_S_DEFAULT = 30.0
# Backoff between status probes: doubled after each failed probe, capped, so a cluster that comes
# up is noticed within a second or two and one that never does is not hammered.
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 1.0
# How long partitions of a healthy cluster may go without a leader before a command runs anyway:
# a Raft election takes a second or two, so anything longer is not an election in progress.
ELECTION_WAIT_S = 10.0


class ClusterNotReadyError(ClientError):
    """The cluster was not ready within `--wait-timeout`; the message says what was missing."""


def not_ready_reason(status: codec.ClusterStatusResponse) -> str | None:
    """Why the cluster `status` describes cannot serve commands yet; None when it can."""
    if status.controller_id < 0:
        return "the controller has no leader yet"
    registered = {broker.node_id for broker in status.brokers}
    missing = sorted(set(status.controller_voters) - registered)
    if missing:
        nodes = ",".join(str(node) for node in missing)
        return f"broker(s) {nodes} have not registered with the controller yet"
    if status.internal_topics_missing:
        names = ", ".join(status.internal_topics_missing)
        return f"the internal topics are not all created yet ({names})"
    return None


def electing_reason(status: codec.ClusterStatusResponse) -> str | None:
    """Which partitions of a cluster whose brokers are all active have no leader: they are being
    elected, so waiting a little spares the command a retriable error. None when there are none,
    or when a broker is fenced or leaving (its partitions may stay leaderless: no use waiting)."""
    if not status.offline_partitions:
        return None
    if any(broker.state != ACTIVE for broker in status.brokers):
        return None
    first = status.offline_partitions[0]
    count = len(status.offline_partitions)
    return f"{count} partition(s) have no leader yet (e.g. {first.topic}-{first.partition})"


def wait_for_cluster(bootstrap: str, timeout_s: float, **security: Unpack[SecurityOptions]) -> None:
    """Return once the cluster at `bootstrap` is ready (see the module docstring).

    Raises `ClusterNotReadyError` after `timeout_s` of retriable failures (no broker listening,
    no controller leader, a voter not registered); a malformed address raises `ConfigError` at
    once; a broker answering with a non-retriable error ends the wait (the command meets it).
    Partitions still electing leaders are waited for up to `ELECTION_WAIT_S`, then the command
    runs anyway: it may not need them, and it reports what it meets if it does. A failed TLS
    handshake raises `TlsHandshakeError` at once: waiting does not fix a certificate.
    """
    addresses = format_addresses(parse_bootstrap(bootstrap))
    with _spinner(f"waiting for the cluster at {addresses}") as show:
        reason = trio.run(_wait, bootstrap, timeout_s, show, security)
    if reason is not None:
        raise ClusterNotReadyError(
            f"gave up after {timeout_s:g} s waiting for the cluster at {addresses}: {reason} "
            "(start the brokers, check the addresses, or wait longer with --wait-timeout)"
        )


async def _wait(
    bootstrap: str, timeout_s: float, show: Callable[[str], None], security: SecurityOptions
) -> str | None:
    """None once ready, else the last reason the cluster was not, when `timeout_s` ran out."""
    reason = "no answer yet"
    backoff_s = FIRST_BACKOFF_S
    electing_until: float | None = None
    with trio.move_on_after(timeout_s):
        while True:
            status, reason = await _probe(bootstrap, security)
            if status is not None and reason is None:
                reason = electing_reason(status)
                if reason is not None:
                    electing_until = electing_until or trio.current_time() + ELECTION_WAIT_S
                    if trio.current_time() >= electing_until:
                        return None
            else:
                electing_until = None
            if reason is None:
                return None
            show(reason)
            await trio.sleep(backoff_s)
            backoff_s = min(MAX_BACKOFF_S, backoff_s * 2)
    # Out of time while partitions were still electing: the cluster itself is up.
    return None if electing_until is not None else reason


async def _probe(
    bootstrap: str, security: SecurityOptions
) -> tuple[codec.ClusterStatusResponse | None, str | None]:
    """Ask any broker for the cluster's status: the status (None if no broker gave one) and why
    the cluster is not ready (None if it is). A retriable failure is a reason to wait; an error
    waiting cannot fix (a broker that refuses the request) is left for the command to meet and
    report in its own terms."""
    try:
        async with AdminClient(bootstrap, **security) as admin:
            status = await admin.cluster_status()
    except TlsHandshakeError:
        raise
    except (BrokerUnavailableError, ConnectionLostError, RequestTimedOutError) as exc:
        return None, str(exc)
    except BrokerError as exc:
        return None, f"{exc.code.name}: {exc.message}" if exc.code.retriable else None
    return status, not_ready_reason(status)


@contextlib.contextmanager
def _spinner(heading: str) -> Iterator[Callable[[str], None]]:
    """A rich spinner on stderr showing why we still wait, when stderr is a terminal; else a
    no-op, so scripts and logs get only the final outcome."""
    if not sys.stderr.isatty():
        yield lambda reason: None
        return
    from rich.console import Console

    with Console(stderr=True).status(heading) as status:
        yield lambda reason: status.update(f"{heading}: {reason}")
