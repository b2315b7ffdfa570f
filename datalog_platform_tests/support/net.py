"""Ports on 127.0.0.1 for the servers the tests start, and for connections that must be refused."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then closed): a server started next can
    take it, and connecting to it meanwhile is refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
