"""Listening sockets: several per address, so a burst of new connections is accepted quickly.

The event loop (libuv, through uvloop) accepts one connection per listening socket per loop
turn; under load a turn takes a couple of milliseconds, so a thousand connections arriving at
once at a busy server waited up to three seconds in the kernel's accept queue. With ``count``
sockets bound to the same address (``SO_REUSEPORT``: the kernel spreads new connections over
them by their address hash), the loop accepts up to ``count`` connections a turn.

``SO_REUSEPORT`` would also let a second server started by the same user on the same port share
its connections without a word; before binding, the address is claimed once without it, so a
port in use is refused ("address already in use") as with a single socket."""

from __future__ import annotations

import socket
import sys

__all__ = ["open_listeners", "spreads_connections"]


def spreads_connections() -> bool:
    """Whether sockets bound with ``SO_REUSEPORT`` share an address's new connections. Linux
    spreads them; the BSDs and macOS give them all to the last socket bound, so there one
    socket an address is all that helps."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def open_listeners(host: str, port: int, *, count: int, backlog: int) -> list[socket.socket]:
    """Bound, listening, non-blocking sockets for ``host:port``: ``count`` for each address the
    host resolves to (one where :func:`spreads_connections` is false). Port 0 takes a free port,
    the same for all. Raises ``OSError`` (``EADDRINUSE`` when the port is taken) and then leaves
    nothing open."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    shared = count > 1 and spreads_connections()
    opened: list[socket.socket] = []
    try:
        for family, address in _addresses(host, port):
            address = _claim(family, _with_port(address, port))
            port = int(address[1])  # port 0: every address on the port the first was given
            for _ in range(count if shared else 1):
                opened.append(_listen(family, address, backlog=backlog, reuse_port=shared))
    except BaseException:
        for sock in opened:
            sock.close()
        raise
    return opened


def _addresses(host: str, port: int) -> list[tuple[int, tuple[object, ...]]]:
    """The distinct (family, address) pairs ``host`` resolves to, in the resolver's order."""
    found: list[tuple[int, tuple[object, ...]]] = []
    for family, _type, _proto, _name, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        if family in (socket.AF_INET, socket.AF_INET6) and (family, address) not in found:
            found.append((family, address))
    if not found:
        raise OSError(f"{host!r} resolves to no IPv4 or IPv6 address")
    return found


def _claim(family: int, address: tuple[object, ...]) -> tuple[object, ...]:
    """Bind ``address`` once without ``SO_REUSEPORT`` (so a port any socket holds is refused) and
    return the address bound (port 0 becomes the port the kernel chose)."""
    probe = _socket(family, reuse_port=False)
    try:
        probe.bind(address)
        return _with_port(address, probe.getsockname()[1])
    finally:
        probe.close()


def _with_port(address: tuple[object, ...], port: int) -> tuple[object, ...]:
    return (address[0], port, *address[2:])


def _listen(family: int, address: tuple[object, ...], *, backlog: int, reuse_port: bool) -> socket.socket:
    sock = _socket(family, reuse_port=reuse_port)
    try:
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _socket(family: int, *, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # a restarted server binds while its old connections are in TIME_WAIT, as asyncio's does
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:  # as asyncio's: "::" is IPv6 only, 0.0.0.0 is bound by itself
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    except BaseException:
        sock.close()
        raise
    return sock
