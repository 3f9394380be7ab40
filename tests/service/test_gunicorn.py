"""The service as it runs in production: `python -m matcher init`, then gunicorn with two worker processes."""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import ORGS, ROOT, TEST_DB_URL, empty_db_url

pytestmark = pytest.mark.slow  # every test here runs a real gunicorn

BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(data, port, **settings) -> dict:
    """The environment of a service on its own data dir and port (MATCHER_* settings given by name; its store is
    the SQLite file in the data dir unless db_url is given); without API keys (MATCHER_AUTH=off, on loopback)
    unless ``auth="on"`` is given."""
    env = {k: v for k, v in os.environ.items() if k != "MATCHER_DB_URL"}
    env.update({"MATCHER_DATA_DIR": str(data), "MATCHER_PORT": str(port), "MATCHER_LOAD_DEMO": "0",
                "HF_HUB_OFFLINE": "1", "MATCHER_AUTH": "off", **{f"MATCHER_{k.upper()}": str(v) for k, v in settings.items()}})
    return env


def start_gunicorn(env: dict, log_path, conf: str = "service/gunicorn_conf.py"):
    """gunicorn as `make run` starts it (in its own session), once /readyz answers 200: (process, base URL, log file)."""
    log = open(log_path, "w+")
    proc = subprocess.Popen([os.path.join(BIN, "gunicorn"), "-c", conf, "service:create_app()"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{env['MATCHER_PORT']}"
    deadline = time.time() + 180
    while True:
        assert proc.poll() is None, open(log_path).read()
        try:
            if requests.get(f"{base}/readyz", timeout=5).status_code == 200:
                return proc, base, log
        except requests.RequestException:  # not listening yet, or queued while the workers boot
            pass
        assert time.time() < deadline, "gunicorn did not become ready"
        time.sleep(0.3)


def stop_gunicorn(proc, log) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=40)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    data = tmp_path_factory.mktemp("gunicorn")
    env = service_env(data, free_port(), db_url=empty_db_url(data), workers=2)
    subprocess.run([sys.executable, "-m", "matcher", "-q", "init"], cwd=ROOT, env=env, check=True, timeout=300)
    proc, base, log = start_gunicorn(env, data / "gunicorn.log")
    try:
        yield base, data / "gunicorn.log"
    finally:
        stop_gunicorn(proc, log)


def match_ids(base, text, k=3):
    # A new connection per request: the two workers take turns accepting.
    r = requests.post(f"{base}/v1/match", json={"query": {"text": text}, "k": k, "explain": False},
                      headers={"Connection": "close"}, timeout=60)
    assert r.status_code == 200, r.text
    return [m["id"] for m in r.json()["matches"]]


def serving_pids(log_path, marker) -> set[str]:
    return set(re.findall(rf"pid=<?(\d+)>? \"POST {re.escape(marker)}", open(log_path).read()))


def test_two_workers_see_every_write_at_once(server):
    base, log_path = server
    assert requests.post(f"{base}/v1/organisations/bulk", json={"items": ORGS}, timeout=120).status_code == 200
    r = requests.post(f"{base}/v1/organisations", json={
        "id": "hydro", "name": "HydroLoop", "type": "startup",
        "description": "Greywater recycling units for apartment blocks."}, timeout=60)
    assert r.status_code == 201
    query = "greywater recycling for apartment blocks"
    # Which worker accepts a connection is the kernel's choice, and one threaded worker may take many in a row (a
    # repeated query is answered from its cache in milliseconds): 8 at a time until both have served (16 to 200).
    results = []
    with ThreadPoolExecutor(8) as pool:
        while len(results) < 16 or (len(serving_pids(log_path, "/v1/match")) < 2 and len(results) < 200):
            results += pool.map(lambda _: match_ids(base, query), range(8))
    assert all(ids[0] == "hydro" for ids in results), results
    assert len(serving_pids(log_path, "/v1/match")) == 2, "both workers should have served matches"

    assert requests.delete(f"{base}/v1/organisations/hydro", timeout=60).status_code == 204
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: match_ids(base, query, k=10), range(16)))
    assert all("hydro" not in ids for ids in results), results


def test_errors_and_readiness_over_http(server):
    base, _ = server
    r = requests.post(f"{base}/v1/match", data="{oops", headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["details"][0]["field"] == "body"
    ready = requests.get(f"{base}/readyz", timeout=30).json()
    assert ready["ready"] is True and ready["store_seq"] == ready["index_seq"]
    assert requests.get(f"{base}/openapi.json", timeout=30).json()["openapi"].startswith("3.")


# The heaviest bulk allowed is as many real profiles as MATCHER_MAX_EMBED_CHARS lets one request embed (about
# 65 CORDIS organisations with their past projects: about a minute on a busy 2-core machine); 1,000 are over it.
@pytest.mark.skipif(bool(TEST_DB_URL), reason="the heaviest bulk runs on SQLite only: its time is embedding, not storage")
def test_the_heaviest_bulk_allowed_is_answered_well_within_the_timeout(server):
    from matcher.settings import Settings
    from service.budget import profile_chars
    from tests.conftest import pool_organisations

    base, _ = server
    items = pool_organisations(1000)
    r = requests.post(f"{base}/v1/organisations/bulk", json={"items": items}, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "over_budget", r.text[:500]
    assert r.json()["error"]["details"][0]["field"] == "items"

    settings, used, n = Settings.from_env(), 0, 0
    while used + profile_chars(items[n]) <= settings.max_embed_chars:
        used, n = used + profile_chars(items[n]), n + 1
    heaviest = items[:n]
    broken = heaviest[:-1] + [{**heaviest[-1], "type": "consultancy"}]
    r = requests.post(f"{base}/v1/organisations/bulk", json={"items": broken}, timeout=60)
    assert r.status_code == 400 and r.json()["error"]["details"][0]["field"] == f"items[{n - 1}].type"
    assert requests.get(f"{base}/v1/organisations/{items[0]['id']}", timeout=30).status_code == 404  # nothing written

    started = time.time()
    r = requests.post(f"{base}/v1/organisations/bulk", json={"items": heaviest}, timeout=settings.timeout)
    took = time.time() - started
    assert r.status_code == 200 and r.json()["count"] == n, r.text[:500]
    print(f"the heaviest bulk allowed, {n} real profiles ({used:,} characters to embed): {took:.1f} s")
    assert took < settings.timeout
    target = heaviest[n // 2]
    assert target["id"] in match_ids(base, target["description"], k=5)
