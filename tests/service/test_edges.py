"""The service at its edges: slow clients, malformed HTTP and the work budget of a request.

The HTTP cases talk raw sockets to a real gunicorn started as `make run` starts it (service/gunicorn_conf.py).
"""
import json
import socket
import subprocess
import sys
import threading
import time

import pytest
import requests

from service.http_edge import MAX_HEAD, request_complete
from tests.conftest import ORGS, ROOT, empty_db_url
from tests.service.test_gunicorn import free_port, service_env, start_gunicorn, stop_gunicorn

MAX_BODY = 65_536  # the served gunicorn's MATCHER_MAX_BODY_BYTES
READ_TIMEOUT = 12  # and its MATCHER_READ_TIMEOUT


# --- when a buffered request is whole (no gunicorn) ------------------------------------------------------

@pytest.mark.parametrize("data, whole", [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n", False),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n12345", False),
    (b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n1234567890", True),
    (b"POST / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n", True),  # over the limit: refused at once
    (b"POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n", True),  # bad framing: refused at once
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", True),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n", False),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\n", False),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\n\r\n", True),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", True),  # an invalid chunk size
    (b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD, True),  # a head that never ends: gunicorn refuses it
])
def test_a_request_is_served_once_whole(data, whole):
    assert request_complete(data, max_body=1000) is whole


# --- request threads share one model ----------------------------------------------------------------------

def test_threads_share_the_encoder_and_get_what_one_thread_gets(encoder):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"Sensor networks for water quality, site {i}. " * (1 + i % 40) for i in range(24)]
    alone = [encoder.encode_with_sentences([t])[0][0] for t in texts]
    with ThreadPoolExecutor(8) as pool:  # the fast tokenizer used by two threads at once raises "Already borrowed"
        shared = list(pool.map(lambda t: encoder.encode_with_sentences([t])[0][0], texts))
    assert all(abs(a - b).max() < 1e-5 for a, b in zip(alone, shared))


# --- the work budget (the app alone) ----------------------------------------------------------------------

@pytest.fixture
def budget_client(settings, engine):
    from dataclasses import replace

    from service import create_app

    app = create_app(replace(settings, max_embed_chars=2_000), engine)
    return app.test_client()


def test_writes_and_batches_over_the_budget_are_413_naming_field_and_limit(budget_client):
    big = {**ORGS[0], "description": "Water. " * 300, "past_projects": [{"title": "A project on water reuse " * 10}]}
    for path, body, field in [("/v1/organisations", big, "body"), ("/v1/organisations/bulk", {"items": ORGS * 20}, "items"),
                              ("/v1/match/batch", {"requests": [{"query": {"text": "water " * 300}}] * 2}, "requests")]:
        r = budget_client.post(path, json=body)
        assert r.status_code == 413, (path, r.get_json())
        error = r.get_json()["error"]
        assert error["code"] == "over_budget" and error["details"][0]["field"] == field
        assert "2,000" in error["details"][0]["problem"] and "MATCHER_MAX_EMBED_CHARS" in error["message"]
    assert budget_client.get(f"/v1/organisations/{ORGS[0]['id']}").status_code == 404  # nothing written
    assert budget_client.post("/v1/organisations/bulk", json={"items": ORGS[:2]}).status_code == 200
    assert budget_client.post("/v1/match/batch", json={"requests": [{"query": {"text": "water reuse"}}]}).status_code == 200


# --- real gunicorn ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("edges")
    env = service_env(data, free_port(), db_url=empty_db_url(data), workers=2, max_body_bytes=MAX_BODY,
                      read_timeout=READ_TIMEOUT)
    subprocess.run([sys.executable, "-m", "matcher", "-q", "init"], cwd=ROOT, env=env, check=True, timeout=300)
    proc, base, log = start_gunicorn(env, data / "gunicorn.log")
    try:
        assert requests.post(f"{base}/v1/organisations/bulk", json={"items": ORGS}, timeout=120).status_code == 200
        yield base, int(env["MATCHER_PORT"])
    finally:
        stop_gunicorn(proc, log)


def raw(port: int, data: bytes, timeout: float = 30) -> tuple[int, bytes, dict]:
    """Send bytes, read until the server closes: (status, head, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        while chunk := sock.recv(1 << 16):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, json.loads(body)


def chunked(body: bytes, size: int = 1000) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size]) for i in range(0, len(body), size)) + b"0\r\n\r\n"


MATCH = b"POST /v1/match HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nConnection: close\r\n"


@pytest.mark.slow
@pytest.mark.parametrize("request_bytes, status, field", [
    (b"GET /healthz HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + b"k" * 9000 + b"\r\n\r\n", 431, "headers"),
    (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Note: a\rb\r\n\r\n", 400, "headers"),
    (b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Note: a\x00b\r\n\r\n", 400, "headers"),
    (MATCH + b"Content-Length: -5\r\n\r\n", 400, "headers"),
    (MATCH + b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400, "headers"),
    (MATCH + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400, "body"),
    (MATCH + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b" " * (MAX_BODY + 10)), 413, "body"),
    (MATCH + b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1), 413, "body"),
    (b"GET /healthz HTTP/9.9\r\nHost: t\r\n\r\n", 400, "request_line"),
])
def test_http_layer_errors_are_json(server, request_bytes, status, field):
    got, head, body = raw(server[1], request_bytes)
    assert got == status, body
    assert b"content-type: application/json" in head.lower()
    assert body["error"]["code"] and body["error"]["message"] and body["error"]["details"][0]["field"] == field


@pytest.mark.slow
def test_a_chunked_body_within_the_limit_is_served(server):
    query = json.dumps({"query": {"text": "greywater recycling"}, "k": 2, "explain": False}).encode()
    status, _, body = raw(server[1], MATCH + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(query, 7))
    assert status == 200 and len(body["matches"]) == 2


@pytest.mark.slow
def test_a_request_not_sent_whole_in_time_is_408(server):
    started = time.time()
    status, _, body = raw(server[1], MATCH + b"Content-Length: 100\r\n\r\n{", timeout=READ_TIMEOUT + 10)
    assert status == 408 and body["error"]["code"] == "request_timeout"
    assert READ_TIMEOUT - 1 < time.time() - started < READ_TIMEOUT + 5


def timed_match(base, session) -> float:
    started = time.perf_counter()
    r = session.post(f"{base}/v1/match", json={"query": {"text": "greywater recycling for apartment blocks"}, "k": 5},
                     timeout=60)
    assert r.status_code == 200, r.text
    return time.perf_counter() - started


@pytest.mark.slow
def test_fifty_stalled_and_trickling_clients_do_not_delay_anyone(server):
    base, port = server
    with requests.Session() as session:  # kept alive: also the worker's path for a connection's next request
        usual = min(timed_match(base, session) for _ in range(3))

    # 25 clients trickle their headers and 25 the body they announced, a byte a second; none ever finishes.
    slow = [(b"", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"s" * 100)] * 25
    slow += [(MATCH + b"Content-Length: 1000\r\n\r\n", b"{" * 1000)] * 25
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in slow]
    for sock, (sent_at_once, _) in zip(clients, slow):
        sock.sendall(sent_at_once)
    stop = threading.Event()

    def trickle():
        for i in range(100):
            for sock, (_, trickled) in zip(clients, slow):
                sock.sendall(trickled[i:i + 1])
            if stop.wait(1):
                return

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        time.sleep(2)
        waits = []
        for _ in range(5):
            started = time.perf_counter()
            assert requests.get(f"{base}/healthz", timeout=10).status_code == 200
            waits.append(time.perf_counter() - started)
        with requests.Session() as session:
            slowed = min(timed_match(base, session) for _ in range(3))
        assert trickler.is_alive()
    finally:
        stop.set()
        trickler.join()
        for sock in clients:
            sock.close()
    print(f"/healthz beside 50 slow clients: at most {max(waits):.3f} s; match {slowed:.3f} s (usual {usual:.3f} s)")
    assert max(waits) < 1.0, waits
    assert slowed < max(2 * usual, usual + 0.5), (slowed, usual)
