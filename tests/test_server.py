"""`tagger serve` itself, on 127.0.0.1 (and ::1): slow clients, over-size bodies, its own Host name.

Bounded checks, not benchmarks: a normal request must answer within a second while many slow
clients hold connections, and those must be gone once their deadline has passed.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tagger.index import Index

TAGGER = str(Path(sys.executable).parent / "tagger")
SLOW_CLIENTS = 150
CONNECTION_LIMIT = 100
REQUEST_TIMEOUT = 2

Serve = Callable[..., tuple[str, int, int]]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start `tagger serve` on a free port with these web settings; yields (host, port, pid)."""
    started: list[subprocess.Popen[str]] = []

    def start(**web: object) -> tuple[str, int, int]:
        library = tmp_path / "library"
        library.mkdir(exist_ok=True)
        index = tmp_path / "index.sqlite"
        Index.open(index).close()
        config = tmp_path / "tagger.yaml"
        settings = {"port": 0, "max_upload_mb": 1, **web}
        config.write_text(yaml.safe_dump({"folders": [str(library)], "index": str(index), "web": settings}))
        server = subprocess.Popen(
            [TAGGER, "--config", str(config), "serve"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        started.append(server)
        line = server.stdout.readline() if server.stdout else ""
        assert "http://" in line, f"tagger serve did not start: {line} {server.stderr.read() if server.stderr else ''}"
        address = line.split("http://", 1)[1].split("/", 1)[0]
        host, port = address.rsplit(":", 1)
        return host.strip("[]"), int(port), server.pid

    yield start
    for server in started:
        server.terminate()
        server.communicate(timeout=20)


def timed_get(host: str, port: int, path: str = "/health", host_header: str | None = None) -> tuple[int, float]:
    started = time.monotonic()
    connection = http.client.HTTPConnection(host, port, timeout=5)
    try:
        connection.request("GET", path, headers={"Host": host_header} if host_header else {})
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic() - started
    finally:
        connection.close()


def is_closed(sock: socket.socket) -> bool:
    """The server has closed (or reset) this connection."""
    try:
        return sock.recv(1024) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_slow_clients_neither_starve_the_viewer_nor_stay(serve: Serve) -> None:
    host, port, _ = serve(connection_limit=CONNECTION_LIMIT, request_timeout=REQUEST_TIMEOUT)
    slow = []
    for _ in range(SLOW_CLIENTS):
        sock = socket.create_connection((host, port), timeout=2)
        sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        sock.setblocking(False)
        slow.append(sock)
    opened = time.monotonic()
    answers: list[float] = []
    dropped_at: dict[int, float] = {}
    try:
        while time.monotonic() - opened < REQUEST_TIMEOUT + 3:
            for i, sock in enumerate(slow):  # one more header line each, well within waitress's idle timeout
                if i in dropped_at:
                    continue
                try:
                    sock.send(b"X-Slow: 1\r\n")
                except OSError:
                    dropped_at[i] = time.monotonic() - opened
                    continue
                if is_closed(sock):
                    dropped_at[i] = time.monotonic() - opened
            if len(answers) < 3 and time.monotonic() - opened > 0.5 * (len(answers) + 1):
                status, seconds = timed_get(host, port)
                assert status == 200
                answers.append(seconds)
            time.sleep(0.2)
    finally:
        for sock in slow:
            sock.close()
    print(f"normal requests answered in {[round(s, 3) for s in answers]} s while {SLOW_CLIENTS} slow clients "
          f"trickled; {len(dropped_at)} dropped, the last after {max(dropped_at.values()):.1f} s")
    assert len(answers) == 3 and max(answers) < 1.0
    assert len(dropped_at) == SLOW_CLIENTS  # none outlives its deadline, however steadily it sends
    assert max(dropped_at.values()) < REQUEST_TIMEOUT + 2.5  # the deadline is checked every second
    late = [t for t in dropped_at.values() if t >= REQUEST_TIMEOUT]
    assert late, "some were dropped by the deadline, not only to make room"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raw_exchange(host: str, port: int, request: bytes) -> tuple[bytes, bytes]:
    """Send raw bytes; the (head, body) of the answer, read until the server closes."""
    sock = socket.create_connection((host, port), timeout=5)
    reply = b""
    try:
        sock.sendall(request)
        while chunk := sock.recv(65536):
            reply += chunk
    except ConnectionResetError:
        pass  # it answered, then closed on a body it never read
    finally:
        sock.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    return head, body


def test_body_over_the_servers_limit_is_answered_by_the_app_and_an_idle_server_sleeps(serve: Serve) -> None:
    host, port, pid = serve()
    head, body = raw_exchange(host, port, (
        b"POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 900000000\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n\r\n" + b"x" * 4096
    ))
    assert head.startswith(b"HTTP/1.1 413") and b"X-Content-Type-Options: nosniff" in head
    assert b"Content-Security-Policy" in head and b"application/json" in head
    assert "web.max_upload_mb" in json.loads(body)["error"]
    head, body = raw_exchange(host, port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: abc\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and b"X-Content-Type-Options: nosniff" in head  # waitress's own refusal
    assert b"Traceback" not in body
    before = cpu_seconds(pid)
    time.sleep(1.5)
    assert cpu_seconds(pid) - before < 0.3  # its loop waits for sockets, it does not spin


def test_ipv6_loopback_answers_to_its_own_host_name(serve: Serve) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    host, port, _ = serve(host="::1")
    assert host == "::1"
    assert timed_get(host, port, host_header=f"[::1]:{port}")[0] == 200
    assert timed_get(host, port, host_header=f"localhost:{port}")[0] == 200
    assert timed_get(host, port, host_header="rebound.example")[0] == 400
