"""Stand-ins for a coordinator on 127.0.0.1: what a node's TLS handshake runs into."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def listener(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A TCP server on a free port that passes each connection to `handle`; yields the port."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            with conn, contextlib.suppress(OSError):
                handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        server.close()


def tls_listener(folder: Path) -> contextlib.AbstractContextManager[int]:
    """A bare TLS server with folder's server.pem/key: what a coordinator's handshake shows."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "server.pem", folder / "server.key")

    def handshake(conn: socket.socket) -> None:
        with context.wrap_socket(conn, server_side=True):
            pass

    return listener(handshake)


def plain_listener() -> contextlib.AbstractContextManager[int]:
    """A server that answers in plain HTTP: a coordinator started without TLS, or another
    service on the port."""

    def answer_in_plain_text(conn: socket.socket) -> None:
        conn.settimeout(2)
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    return listener(answer_in_plain_text)
