"""waitress, with the two things it lacks against slow or hostile clients.

- A deadline per request: waitress drops a connection only after `channel_timeout` of
  silence, and every byte resets that clock, so a client sending one header line every few
  seconds holds a connection for ever; a hundred of them fill the connection limit and
  nobody else gets in. Here a connection that has not delivered a whole request (header
  and body) `web.request_timeout` seconds after it opened, or after its previous answer,
  is closed.
- At the connection limit, waitress stops accepting; here the connection that has waited
  longest for its request is dropped instead, so a new client always gets in.

And a body over waitress's own limit is answered by the app (JSON or the HTML page, with
the security headers), not by waitress's plain text.
"""
from __future__ import annotations

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
        self.waiting_since = time.monotonic()

    def service(self) -> None:
        super().service()
        self.waiting_since = time.monotonic()  # the next request's time starts after this answer


class _GuardedServer(TcpWSGIServer):  # type: ignore[misc]
    channel_class = _Channel
    request_timeout = 30

    def maintenance(self, now: float) -> None:
        super().maintenance(now)
        cutoff = time.monotonic() - self.request_timeout
        for channel in list(self.active_channels.values()):
            if not channel.requests and channel.waiting_since < cutoff:
                channel.will_close = True

    def readable(self) -> bool:
        if self.accepting and len(self._map) >= self.adj.connection_limit:
            self._drop_longest_waiting()
        readable: bool = super().readable()
        return readable

    def _drop_longest_waiting(self) -> None:
        """Close the idle connections that have waited longest, to make room for a new one."""
        channels = list(self.active_channels.values())
        closing = sum(1 for c in channels if c.will_close)
        excess = len(self._map) - self.adj.connection_limit + 1 - closing
        waiting = sorted((c for c in channels if not c.requests and not c.will_close), key=lambda c: c.waiting_since)
        for channel in waiting[: max(0, excess)]:
            channel.will_close = True


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
            connection_limit=web.connection_limit,
            channel_timeout=web.request_timeout,
            cleanup_interval=SWEEP_SECONDS,
            asyncore_loop_timeout=SWEEP_SECONDS,
            ident="tagger",
            clear_untrusted_proxy_headers=True,
        )
        self._dispatcher = ThreadedTaskDispatcher()
        self._dispatcher.set_thread_count(adj.threads)
        self._map: dict[int, Any] = {}
        self._servers: list[_GuardedServer] = []
        try:
            for sockinfo in adj.listen:
                server = _GuardedServer(app, self._map, dispatcher=self._dispatcher, adj=adj, sockinfo=sockinfo)
                server.request_timeout = web.request_timeout
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
