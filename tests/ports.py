"""A free TCP port on the loopback interface, for a test's rendezvous (MASTER_PORT)."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A port the kernel has just handed out and released; a test passes it to the processes it launches."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
