"""A TCP proxy on 127.0.0.1 in front of a local service, which goes down mid-request and comes back.

It stands for an S3 endpoint that stops answering during an upload while the bucket's data lives on (moto
keeps its objects in memory, so stopping moto itself would lose them): the first request whose bytes match
the regular expression ``cut_at`` is forwarded only in part (up to the match and half the bytes read), then every connection is reset and the port refuses new ones for
``down_s`` seconds, after which the proxy listens on the same port again.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time


class OutageProxy:
    def __init__(self, upstream_port: int, cut_at: bytes, down_s: float):
        self.upstream, self.cut_at, self.down_s = ("127.0.0.1", upstream_port), re.compile(cut_at), down_s
        self.lock, self.connections = threading.Lock(), set()
        self.outages: list[tuple[float, float]] = []  # (went down, came back), monotonic seconds
        self.armed, self.closed = True, False
        self.listener = self._listen(0)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def close(self) -> None:
        self.closed = True
        self._drop_all(self.listener)

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the listener was closed: an outage or the end
                return
            try:
                upstream = socket.create_connection(self.upstream)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.connections |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, request: bool) -> None:
        try:
            while data := source.recv(65536):
                cut = request and self.armed and self.cut_at.search(data)
                if cut:
                    self.armed = False
                    sink.sendall(data[: cut.end() + len(data) // 2])  # the head and part of the body
                    self._outage()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._reset(source)
            self._reset(sink)

    def _outage(self) -> None:
        went_down = time.monotonic()
        self._drop_all(self.listener)
        time.sleep(self.down_s)
        if not self.closed:
            self.listener = self._listen(self.port)
            threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()
        self.outages.append((went_down, time.monotonic()))

    def _drop_all(self, listener: socket.socket) -> None:
        listener.close()
        with self.lock:
            connections, self.connections = self.connections, set()
        for conn in connections:
            self._reset(conn)

    @staticmethod
    def _reset(conn: socket.socket) -> None:
        """Close with a TCP reset, as a crashed server's connections end."""
        try:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
        except OSError:
            pass
