"""One-line messages for a listener the broker cannot bind, naming the address and the option
that sets it, so `broker serve` on a taken port says what to change instead of printing
`[Errno 98] Address already in use` with no hint of which of its sockets failed."""

from __future__ import annotations

import errno
import socket

# What the message says of a port taken by another process (EmbeddedCluster retries on fresh ports
# when a broker it starts fails with it).
PORT_IN_USE = "the port is already in use"


def cannot_listen(role: str, address: str, option: str, exc: OSError) -> str:
    """Why listening for `role` (e.g. "clients") on `address` failed, and what to do: change
    `option` (e.g. "--listen")."""
    host = address.rpartition(":")[0] or address
    if isinstance(exc, socket.gaierror):
        problem = f"host {host!r} is unknown ({exc.strerror})"
        fix = f"give a host name or IP address of this machine with {option}"
    elif exc.errno == errno.EADDRINUSE:
        problem = f"{PORT_IN_USE} (by another broker or program)"
        fix = f"stop that process or choose another port with {option}"
    elif exc.errno == errno.EADDRNOTAVAIL:
        problem = f"{host} is not an address of this machine"
        fix = f"give one of its addresses (0.0.0.0 for all) with {option}"
    elif exc.errno == errno.EACCES:
        problem = "permission denied (ports below 1024 need privileges)"
        fix = f"choose a port of 1024 or above with {option}"
    else:
        problem = exc.strerror or str(exc)
        fix = f"choose another address with {option}"
    return f"cannot listen for {role} on {address}: {problem}; {fix}"
