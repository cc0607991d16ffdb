"""TCP relays that misbehave on purpose, in front of a server under test: they cut a request
body or an answer after so many bytes, or drop an answer whole."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class TcpRelay:
    """Relays each connection to ``upstream_port`` on loopback, a thread per connection;
    subclasses say how (`_serve`)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop accepting (connections under way go on)."""
        self.sock.close()


def _shut(*socks: socket.socket) -> None:
    # shutdown, not only close: it wakes another thread's recv on it and sends FIN
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


class CuttingProxy(TcpRelay):
    """TCP proxy to ``upstream_port`` that kills the first ``cuts`` connections carrying more
    than ``cut_after`` request bytes, right after relaying that many."""

    def __init__(self, upstream_port: int, cut_after: int, cuts: int = 1) -> None:
        self.cut_after, self.cuts = cut_after, cuts
        self.cut = 0
        # Instead: relay such a request whole, then drop its *answer* and the connection.
        self.drop_responses = False
        self._lock = threading.Lock()
        super().__init__(upstream_port)

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        doomed = threading.Event()  # relay the request, but never its answer

        def back() -> None:
            try:
                while data := upstream.recv(65536):
                    if doomed.is_set():
                        break
                    client.sendall(data)
            except OSError:
                pass
            finally:
                _shut(client)

        threading.Thread(target=back, daemon=True).start()
        sent = 0
        try:
            while data := client.recv(65536):
                if self.drop_responses and sent + len(data) > self.cut_after:
                    with self._lock:
                        if self.cut < self.cuts:
                            self.cut += 1
                            doomed.set()
                elif sent + len(data) > self.cut_after:
                    with self._lock:
                        cut = self.cut < self.cuts
                        self.cut += cut
                    if cut:
                        upstream.sendall(data[: self.cut_after - sent])
                        time.sleep(0.1)
                        break
                upstream.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            _shut(client, upstream)


class AnswerCutter(TcpRelay):
    """TCP proxy to ``upstream_port`` that drops the first connection whose answer passes
    ``cut_after`` bytes, right after relaying that many; keeps the request heads it relays."""

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.cut_after = cut_after
        self.cut = False
        self.heads: list[bytes] = []
        super().__init__(upstream_port)

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))

        def forth() -> None:
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    self.heads.append(data)
                    upstream.sendall(data)

        threading.Thread(target=forth, daemon=True).start()
        sent = 0
        try:
            while data := upstream.recv(65536):
                if not self.cut and sent + len(data) > self.cut_after:
                    self.cut = True
                    client.sendall(data[:self.cut_after - sent])
                    break
                sent += len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            _shut(client, upstream)
