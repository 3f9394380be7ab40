"""The heaviest requests the API allows, timed under a concurrent load (a bench, not a test).

    .venv/bin/python bench/heavy_request.py                 # 4 match users beside the heavy requests
    .venv/bin/python bench/heavy_request.py --users 8

gunicorn as `make run` starts it (service/gunicorn_conf.py, MATCHER_* defaults: 2 workers, 4 threads each) on a
fresh store in var/bench-heavy/ and a free loopback port, seeded with 100 real CORDIS organisations. While
--users threads send matches without pause (explained, queries from pool descriptions) and one thread times
/healthz every 0.5 s, it sends, one after the other, the heaviest requests MATCHER_MAX_EMBED_CHARS allows:
a bulk of as many further real organisations as fit the budget, and a /v1/match/batch of 50,000-character texts
filling it. Prints each one's time against MATCHER_TIMEOUT, the slowest /healthz and the matches served meanwhile.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from matcher.settings import Settings  # noqa: E402
from models.schemas import MAX_QUERY_TEXT  # noqa: E402
from service.budget import profile_chars  # noqa: E402

POOL = ROOT.parent / "shared" / "data" / "cordis" / "bench" / "pool.jsonl.gz"
FIELDS = ("id", "name", "type", "country", "city", "description", "past_projects")
WORK = ROOT / "var" / "bench-heavy"
SEED = 100


def pool(n: int) -> list[dict]:
    out = []
    with gzip.open(POOL, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            out.append({k: row[k] for k in FIELDS if row.get(k) not in (None, "")})
            if len(out) == n:
                return out
    return out


def start(env: dict) -> subprocess.Popen:
    proc = subprocess.Popen([str(Path(sys.executable).parent / "gunicorn"), "-c", "service/gunicorn_conf.py",
                             "service:create_app()"], cwd=ROOT, env=env, stdout=open(WORK / "gunicorn.log", "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    base, deadline = f"http://127.0.0.1:{env['MATCHER_PORT']}", time.time() + 300
    while time.time() < deadline:
        try:
            if requests.get(f"{base}/readyz", timeout=5).status_code == 200:
                return proc
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.5)
    raise SystemExit(f"gunicorn did not become ready; see {WORK / 'gunicorn.log'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=4, help="threads sending matches beside the heavy requests")
    args = parser.parse_args()
    if not POOL.exists():
        raise SystemExit(f"the CORDIS benchmark pool is not at {POOL}")
    settings = Settings.from_env()
    budget = settings.max_embed_chars
    orgs = pool(2000)
    seed, rest = orgs[:SEED], orgs[SEED:]
    bulk, used = [], 0
    for doc in rest:
        if used + profile_chars(doc) > budget:
            break
        bulk.append(doc)
        used += profile_chars(doc)
    text = " ".join(d["description"] for d in rest)[:MAX_QUERY_TEXT]
    batch = [{"query": {"text": text[i:] + text[:i]}, "k": 10} for i in range(budget // MAX_QUERY_TEXT)]

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MATCHER_DB_URL"}
    env.update(MATCHER_DATA_DIR=str(WORK / "data"), MATCHER_PORT=str(port), MATCHER_LOAD_DEMO="0", MATCHER_AUTH="off",
               MATCHER_JOB_RUNNER="0")
    subprocess.run([sys.executable, "-m", "matcher", "-q", "init"], cwd=ROOT, env=env, check=True)
    proc = start(env)
    base = f"http://127.0.0.1:{port}"
    stop, served, failed, health = threading.Event(), [0], [0], [0.0]
    try:
        for i in range(0, SEED, 20):  # in bulks within the budget
            r = requests.post(f"{base}/v1/organisations/bulk", json={"items": seed[i:i + 20]}, timeout=600)
            assert r.status_code == 200, r.text[:300]

        def match_user(i: int):
            with requests.Session() as session:
                while not stop.is_set():
                    query = rest[-(i * 37 + served[0]) % 500]["description"][:2000]
                    r = session.post(f"{base}/v1/match", json={"query": {"text": query}, "k": 10, "explain": True}, timeout=600)
                    served[0] += r.status_code == 200
                    failed[0] += r.status_code != 200

        def health_probe():
            while not stop.wait(0.5):
                started = time.perf_counter()
                requests.get(f"{base}/healthz", timeout=60)
                health[0] = max(health[0], time.perf_counter() - started)

        threads = [threading.Thread(target=match_user, args=(i,), daemon=True) for i in range(args.users)]
        threads.append(threading.Thread(target=health_probe, daemon=True))
        for t in threads:
            t.start()
        time.sleep(3)
        print(f"gunicorn: {settings.workers} workers x {settings.threads} threads; MATCHER_TIMEOUT {settings.timeout} s; "
              f"MATCHER_MAX_EMBED_CHARS {budget:,}; {args.users} match users; {os.cpu_count()} cores")
        for name, path, body, chars in [
            (f"bulk of {len(bulk)} real organisations", "/v1/organisations/bulk", {"items": bulk}, used),
            (f"match batch of {len(batch)} texts of {MAX_QUERY_TEXT:,} characters", "/v1/match/batch",
             {"requests": batch}, len(batch) * MAX_QUERY_TEXT),
        ]:
            started = time.perf_counter()
            r = requests.post(f"{base}{path}", json=body, timeout=settings.timeout + 60)
            took = time.perf_counter() - started
            print(f"{name} ({chars:,} characters to embed): HTTP {r.status_code} in {took:.1f} s "
                  f"({took / settings.timeout:.0%} of MATCHER_TIMEOUT)")
        r = requests.post(f"{base}/v1/organisations/bulk", json={"items": bulk + rest[len(bulk):len(bulk) + 50]}, timeout=60)
        print(f"the same bulk with 50 more organisations: HTTP {r.status_code} {r.json()['error']['code']}")
    finally:
        stop.set()
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    print(f"meanwhile: {served[0]} matches served ({failed[0]} failed); slowest /healthz {health[0]:.2f} s")
    return 1 if failed[0] else 0


if __name__ == "__main__":
    sys.exit(main())
