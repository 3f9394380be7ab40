"""The HTTP edge: gunicorn's threaded worker, made safe to face clients directly.

``EdgeWorker`` (``worker_class`` in service/gunicorn_conf.py) differs from gunicorn's gthread worker in two ways:

* It reads each request whole (headers and body, up to ``MATCHER_MAX_BODY_BYTES``) in its event loop, without
  blocking, and only then hands it to a request thread, as a buffering proxy would. A client that stalls or
  trickles a byte a second costs a socket and its buffer, never a thread; one that has not sent its whole
  request within ``MATCHER_READ_TIMEOUT`` gets 408 and is closed.
* Everything gunicorn itself refuses (a malformed request line or header, headers over 8 KB, bad framing, a
  chunked body that is malformed or over the limit) is answered in the API's JSON error shape
  (service/errors.py), with the right status.
"""
from __future__ import annotations

import errno
import io
import json
import re
import selectors
import socket
import struct
import time
from functools import partial

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.body import Body
from gunicorn.workers.gthread import TConn, ThreadWorker

from matcher.settings import Settings
from service.errors import error_document

MAX_HEAD = 1 << 20  # bytes of request line and headers buffered at most; gunicorn refuses far less (431)
_EXPECT_CONTINUE = re.compile(rb"\r\nexpect:[ \t]*100-continue[ \t]*\r\n", re.I)


class BodyTooLarge(Exception):
    """A request body over MATCHER_MAX_BODY_BYTES (a chunked one, or a Content-Length that says so)."""


class ReadTimeout(Exception):
    """A client that did not send its whole request within MATCHER_READ_TIMEOUT."""


def _framing(head: bytes) -> tuple[int | None, bool, bool]:
    """(Content-Length, chunked, readable) of a request head; not readable when the framing is one gunicorn
    refuses (it then answers without reading a body)."""
    length, chunked = None, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip()
        if name == b"content-length":
            if not value.isdigit() or length is not None:
                return None, False, False
            length = int(value)
        elif name == b"transfer-encoding":
            chunked = value.lower().split(b",")[-1].strip() == b"chunked"
            if not chunked:
                return None, False, False
    return length, chunked, not (chunked and length is not None)


def _chunked_complete(body: bytes) -> bool:
    """Whether a chunked body holds its last chunk and trailers, or framing the parser will refuse."""
    pos = 0
    while True:
        end = body.find(b"\r\n", pos)
        if end < 0:
            return False
        size = body[pos:end].split(b";", 1)[0].strip()
        try:
            size_int = int(size, 16)
        except ValueError:
            return True  # an invalid chunk size: gunicorn refuses it
        if size_int == 0:
            return body.startswith(b"\r\n", end + 2) or body.find(b"\r\n\r\n", end) >= 0
        pos = end + 2 + size_int + 2
        if pos > len(body):
            return False


def request_complete(data: bytes, max_body: int) -> bool:
    """Whether ``data`` holds a whole request (head and body), or enough of one for gunicorn to refuse it (a
    head over MAX_HEAD, bad framing, a body over ``max_body``): then a thread may serve it without waiting."""
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0:
        return len(data) > MAX_HEAD
    length, chunked, readable = _framing(data[:head_end])
    body = data[head_end + 4:]
    if not readable or len(body) > max_body:
        return True
    if chunked:
        return _chunked_complete(body)
    return length is None or length > max_body or len(body) >= length


def _refusal(exc: Exception) -> tuple[int, str, str, str]:
    """(status, code, field, message) for an error of gunicorn's HTTP layer."""
    e = http_errors
    if isinstance(exc, BodyTooLarge):
        return 413, "request_entity_too_large", "body", str(exc)
    if isinstance(exc, ReadTimeout):
        return 408, "request_timeout", "request", str(exc)
    if isinstance(exc, e.LimitRequestHeaders):
        return 431, "request_header_fields_too_large", "headers", "the request's headers are larger than the server accepts"
    if isinstance(exc, e.LimitRequestLine):
        return 414, "uri_too_long", "request_line", "the request line is longer than the server accepts"
    if isinstance(exc, e.UnsupportedTransferCoding):
        return 501, "not_implemented", "headers", f"unsupported Transfer-Encoding: {exc}"
    if isinstance(exc, e.ExpectationFailed):
        return 417, "expectation_failed", "headers", f"unsupported Expect: {exc}"
    if isinstance(exc, (e.InvalidChunkSize, e.ChunkMissingTerminator, e.InvalidChunkExtension)):
        return 400, "bad_request", "body", f"malformed chunked body: {exc}"
    if isinstance(exc, (e.InvalidRequestLine, e.InvalidRequestMethod, e.InvalidHTTPVersion)):
        return 400, "bad_request", "request_line", f"malformed request line: {exc}"
    if isinstance(exc, (e.ParseException, UnicodeDecodeError)):
        return 400, "bad_request", "headers", f"malformed request: {exc}"
    return 500, "internal_error", "", "the server failed to answer this request"


def error_bytes(exc: Exception) -> tuple[int, bytes]:
    """The whole HTTP response (JSON body, connection closed) for an error of the HTTP layer."""
    status, code, field, message = _refusal(exc)
    body = json.dumps(error_document(code, message, [{"field": field, "problem": message}] if field else [])).encode()
    head = (f"HTTP/1.1 {status} {code.replace('_', ' ').capitalize()}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return status, head.encode("latin-1") + body


class _Conn(TConn):
    def close(self, graceful=False):
        """Close without lingering: gunicorn's graceful close waits up to 2 s in the event loop for the client to
        close first, which a client that never does would turn into a stall of every connection. The request was
        read whole, so there is little to drain: what has arrived is dropped, then the socket closed."""
        if graceful:
            try:
                self.sock.shutdown(socket.SHUT_WR)
                self.sock.setblocking(False)
                while self.sock.recv(1 << 16):
                    pass
            except OSError:
                pass
        util.close(self.sock)


class EdgeWorker(ThreadWorker):
    """gunicorn's gthread worker that buffers whole requests before a thread serves them (see the module)."""

    def init_process(self):
        settings = Settings.from_env()
        self.max_body, self.read_timeout = settings.max_body_bytes, settings.read_timeout
        super().init_process()

    # --- the event loop: reading requests whole ---------------------------------------------------------

    def accept(self, listener):
        try:
            client, addr = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        # A thread never waits on a client for long: reads (a request gunicorn asks more of than was buffered)
        # and writes (a response the client does not read) give up after the read timeout.
        timeval = struct.pack("ll", int(self.read_timeout), int(self.read_timeout % 1 * 1e6))
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            client.setsockopt(socket.SOL_SOCKET, option, timeval)
        self._buffer(_Conn(self.cfg, client, addr, listener.getsockname()))

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection's next request: read it whole too."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._buffer(conn)

    def _buffer(self, conn):
        conn.sock.setblocking(False)
        conn.inbox, conn.continued = bytearray(), False
        conn.timeout = time.monotonic() + self.read_timeout
        self.pending_conns.append(conn)  # murder_pending answers it 408 when it runs out of time
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._receive, conn))

    def _receive(self, conn, sock):
        try:
            data = sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        conn.inbox += data
        if data and not request_complete(conn.inbox, self.max_body):
            if not conn.continued and _EXPECT_CONTINUE.search(conn.inbox[:conn.inbox.find(b"\r\n\r\n") + 2]):
                conn.continued = True  # the client waits for this before it sends the body (curl does)
                try:
                    sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                except OSError:
                    pass
            return
        self.poller.unregister(sock)
        self.pending_conns.remove(conn)
        if not data:  # the client went away before its request was whole
            self.nr_conns -= 1
            conn.close()
            return
        conn.data_ready = True
        conn.init()
        conn.parser.unreader.unread(bytes(conn.inbox))
        del conn.inbox
        self.enqueue_req(conn)

    def murder_pending(self):
        """Answer 408 to the clients whose request is not whole in time, and close them."""
        now = time.monotonic()
        while self.pending_conns and self.pending_conns[0].timeout <= now:
            conn = self.pending_conns.popleft()
            try:
                self.poller.unregister(conn.sock)
            except (OSError, KeyError, ValueError):
                pass
            self.nr_conns -= 1
            if getattr(conn, "inbox", None):  # a connection kept alive with nothing sent just closes
                try:
                    conn.sock.send(error_bytes(ReadTimeout(f"the request was not sent whole within {self.read_timeout:g} s"))[1])
                except OSError:
                    pass
            conn.close()

    # --- the request threads ---------------------------------------------------------------------------

    def handle_request(self, req, conn):
        """Serve a request whose body is read first (it is in the buffer already): its framing errors and its
        size are answered here, in JSON, before the application sees it."""
        length = next((v for n, v in req.headers if n == "CONTENT-LENGTH"), None)
        if length is not None and int(length) > self.max_body:
            raise BodyTooLarge(f"the body is {length} bytes; the server accepts at most {self.max_body}")
        data = req.body.read(self.max_body + 1)
        if len(data) > self.max_body:
            raise BodyTooLarge(f"the body is over {self.max_body} bytes, the most the server accepts")
        req.body = Body(io.BytesIO(data))
        return super().handle_request(req, conn)

    def handle_error(self, req, client, addr, exc):
        status, response = error_bytes(exc)
        if status >= 500 and status != 501:
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
        else:
            self.log.warning("Invalid request from ip=%s: %s", (addr or ("",))[0], exc)
        try:
            util.write(client, response)
        except Exception:
            self.log.debug("Failed to send error message.")
