"""The one-line reasons `broker serve` gives for a listener it cannot bind
(broker/listen_errors.py): each names the address, the cause and the flag to change."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from broker.listen_errors import cannot_listen


@pytest.mark.parametrize(
    ("error", "cause", "advice"),
    [
        (OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE)), "the port is already in use",
         "choose another port with --listen"),
        (OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL)),
         "10.9.9.9 is not an address of this machine", "(0.0.0.0 for all) with --listen"),
        (OSError(errno.EACCES, os.strerror(errno.EACCES)), "permission denied",
         "a port of 1024 or above with --listen"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
         "host '10.9.9.9' is unknown (Name or service not known)",
         "give a host name or IP address of this machine with --listen"),
        (OSError(errno.EMFILE, os.strerror(errno.EMFILE)), os.strerror(errno.EMFILE),
         "choose another address with --listen"),
    ],
)  # fmt: skip
def test_each_cause_is_named_with_what_to_do(error: OSError, cause: str, advice: str) -> None:
    message = cannot_listen("clients", "10.9.9.9:9092", "--listen", error)
    assert message.startswith(f"cannot listen for clients on 10.9.9.9:9092: {cause}")
    assert message.endswith(advice)
    assert "\n" not in message
