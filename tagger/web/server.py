"""waitress, with what it lacks against slow or hostile clients, and a way past the queue for /health.

- A deadline per request: waitress drops a connection only after `channel_timeout` of
  silence, and every byte resets that clock, so a client sending one header line every few
  seconds holds a connection for ever; a hundred of them fill the connection limit and
  nobody else gets in. Here a connection that has not delivered a whole request (header
  and body) `web.request_timeout` seconds after it opened, or after its previous answer,
  is closed.
- At its connection limit waitress stops accepting, and a new client, /health's too, waits
  behind every connection in the kernel's queue. Here `web.connection_limit` counts only the
  connections waiting for their client (a request still arriving, an idle keep-alive, a new
  connection silent past SILENT_GRACE); past it the one that has waited longest is dropped.
  The server's own work is never dropped: a whole request waiting for a worker, an answer
  being sent, a request whose bytes sit unread in the socket. Those queue, up to the
  connection budget (what the open-files limit allows); past that, new connections wait in
  the listen backlog. A complete request is answered, never reset.
- /health is served by a thread of its own, so that it answers while every serving thread
  is busy and the queue in front of them is long (monitoring and systemd's watchdog ask it).

And a body over waitress's own limit is answered by the app (JSON or the HTML page, with
the security headers), not by waitress's plain text.
"""
from __future__ import annotations

import resource
import socket
import threading
import time
from typing import Any

from flask import Flask
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import RequestEntityTooLarge

from tagger.config import WebConfig
from tagger.web import security_headers
from tagger.web.context import BODY_TOO_LARGE

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and headers around the files of a full upload
SWEEP_SECONDS = 1  # how often connections are checked against their deadline (waitress takes whole seconds)
BACKLOG = 1024  # connections the kernel holds for us past the connection budget
MAX_CONNECTIONS = 4096  # open at once, however high the open-files limit (poll() scans them all)
FILES_RESERVED = 128  # of the open-files limit, for the index connections, thumbnails, logs
HEALTH_PATH = "/health"
# A new connection that has sent nothing yet may be a client between its connect and its request
# (under load, or a browser's preconnect): it is not dropped to make room before this many seconds.
SILENT_GRACE = 2.0


class _ErrorTask(WSGITask):  # type: ignore[misc]
    """waitress's own refusals: an over-size body goes to the app, which answers it as any
    other error; the rest (malformed requests) keep waitress's text, with our headers."""

    def execute(self) -> None:
        error = self.request.error
        if isinstance(error, RequestEntityTooLarge) and self.request.headers_finished:
            self.set_close_on_finish()  # the rest of the body is never read
            self.environ = {**self.get_environment(), BODY_TOO_LARGE: True, "CONTENT_LENGTH": "0"}
            super().execute()
            return
        self.complete = True  # what ErrorTask declares: no start_response comes
        self.response_headers.extend(security_headers().items())  # before the body: headers go out with it
        ErrorTask.execute(self)


class _Channel(HTTPChannel):  # type: ignore[misc]
    error_task_class = _ErrorTask

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting_since = self.opened = time.monotonic()
        self.heard = False  # the client has sent something (or been answered) on this connection

    def received(self, data: bytes) -> bool:
        self.heard = True
        accepted: bool = super().received(data)
        return accepted

    def service(self) -> None:
        super().service()
        self.waiting_since = time.monotonic()  # the next request's time starts after this answer

    def busy(self) -> bool:
        """The server owes this connection something: a request queued or being served, or an
        answer still being sent (or it is closing already)."""
        return bool(self.will_close or self.close_when_flushed or self.requests or self.total_outbufs_len)

    def may_be_dropped(self, now: float) -> bool:
        """Waiting for its client, not for the server: nothing owed, no unread bytes in its socket
        (a request that may be whole), and not a new connection whose request may be on its way."""
        if self.busy() or (not self.heard and now - self.opened < SILENT_GRACE):
            return False
        return not self.unread()  # checked last: a system call

    def unread(self) -> bool:
        """Bytes wait in its socket that the loop has not read yet: a request that may be whole."""
        try:
            return bool(self.socket.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except OSError:  # BlockingIOError: nothing there; any other: a broken connection
            return False

    def wants_health(self) -> bool:
        """Its next request is GET /health (read by the loop thread, right after it was queued)."""
        request = self.requests[0] if self.requests else None
        return request is not None and request.command in ("GET", "HEAD") and request.path == HEALTH_PATH


class _HealthDispatcher(ThreadedTaskDispatcher):  # type: ignore[misc]
    """/health's own thread: it never waits behind the requests queued for the serving threads."""

    def start_new_thread(self, target: Any, thread_no: int) -> None:
        threading.Thread(target=target, name=f"tagger-health-{thread_no}", args=(thread_no,), daemon=True).start()


class _GuardedServer(TcpWSGIServer):  # type: ignore[misc]
    channel_class = _Channel
    request_timeout = 30
    waiting_limit = 100  # web.connection_limit: connections waiting for their client
    health: ThreadedTaskDispatcher | None = None

    def add_task(self, channel: _Channel) -> None:
        if self.health is not None and channel.wants_health():
            self.health.add_task(channel)
        else:
            super().add_task(channel)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        cutoff = time.monotonic() - self.request_timeout
        for channel in list(self.active_channels.values()):
            if channel.waiting_since < cutoff and not channel.busy():
                channel.will_close = True

    def readable(self) -> bool:
        if self.accepting:
            self._drop_longest_waiting()
        readable: bool = super().readable()  # accepts while under adj.connection_limit: the open-files budget
        return readable

    def _drop_longest_waiting(self) -> None:
        """Keep fewer than `waiting_limit` connections waiting for their client, room for one more:
        those that have waited longest are closed. Connections the server owes work are not counted."""
        channels = [c for c in self._map.values() if isinstance(c, _Channel)]
        if len(channels) < self.waiting_limit:
            return
        waiting = sorted((c for c in channels if not c.busy()), key=lambda c: c.waiting_since)
        excess = len(waiting) - self.waiting_limit + 1
        now = time.monotonic()
        for channel in waiting:
            if excess <= 0:
                return
            if channel.may_be_dropped(now):
                channel.will_close = True
                excess -= 1


def connection_budget(waiting_limit: int) -> int:
    """Open connections in all, queued requests included: half of what the open-files limit leaves
    (a queued upload holds a temporary file besides its socket), at least `waiting_limit`."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    available = MAX_CONNECTIONS * 2 if soft == resource.RLIM_INFINITY else soft - FILES_RESERVED
    return max(waiting_limit, min(MAX_CONNECTIONS, available // 2))


class ViewerServer:
    """The viewer on every address web.host resolves to (localhost: 127.0.0.1 and ::1), one loop."""

    def __init__(self, app: Flask, web: WebConfig) -> None:
        adj = Adjustments(
            host=web.host,
            port=web.port,
            threads=web.threads,
            # Over the app's own limit, so the app sees (and refuses) every body it can; past this
            # waitress stops reading, and the app still answers (_ErrorTask).
            max_request_body_size=web.max_upload_mb * 1024 * 1024 + FORM_OVERHEAD,
            connection_limit=connection_budget(web.connection_limit),
            backlog=BACKLOG,
            asyncore_use_poll=True,  # select() fails past 1,024 descriptors; poll() has no such limit
            channel_timeout=web.request_timeout,
            cleanup_interval=SWEEP_SECONDS,
            asyncore_loop_timeout=SWEEP_SECONDS,
            ident="tagger",
            clear_untrusted_proxy_headers=True,
        )
        self._dispatcher = ThreadedTaskDispatcher()
        self._dispatcher.set_thread_count(adj.threads)
        self._health = _HealthDispatcher()
        self._health.set_thread_count(1)
        self._map: dict[int, Any] = {}
        self._servers: list[_GuardedServer] = []
        try:
            for sockinfo in adj.listen:
                server = _GuardedServer(app, self._map, dispatcher=self._dispatcher, adj=adj, sockinfo=sockinfo)
                server.request_timeout = web.request_timeout
                server.waiting_limit = web.connection_limit
                server.health = self._health
                self._servers.append(server)
        except OSError:
            self.close()
            raise

    @property
    def effective_port(self) -> int:
        port: int = self._servers[0].effective_port
        return port

    def run(self) -> None:
        """Serve until close() or Ctrl-C."""
        self._servers[0].run()

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._dispatcher.shutdown()
        self._health.shutdown()
