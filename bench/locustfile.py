"""The users of bench/load.py (run it, not this file: it prepares the store, the key and the server).

bench/load.py starts `locust -f bench/locustfile.py --headless ... MatchUser ReadUser WriterUser` with:
LOAD_BENCH_DIR (queries.json, ids.json, writer.json), LOAD_BENCH_KEY (the API key), LOAD_BENCH_TIMES (where the
timings go), LOAD_BENCH_MATCH_USERS / LOAD_BENCH_READ_USERS (how many of each), LOAD_BENCH_SEED.

Every request is timed here (locust's `request` event, exact milliseconds) and written as
[class, ms, error or "", wall time it ended] to LOAD_BENCH_TIMES at the end, with the wall times the test
started and reached its time limit.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

from locust import FastHttpUser, constant, constant_pacing, events, task

DIR = Path(os.environ.get("LOAD_BENCH_DIR", "."))
KEY = os.environ.get("LOAD_BENCH_KEY", "")
SEED = int(os.environ.get("LOAD_BENCH_SEED", "7"))
HEADERS = {"Authorization": f"Bearer {KEY}"}
random.seed(SEED)


def _load(name: str) -> list:
    path = DIR / name
    return json.loads(path.read_text()) if path.exists() else []


QUERIES: list[str] = _load("queries.json")
IDS: list[str] = _load("ids.json")
WRITER: list[dict] = _load("writer.json")

_requests: list[list] = []
_window: dict = {}


@events.test_start.add_listener
def _started(**_):
    _window["started"] = time.time()


@events.test_stopping.add_listener
def _stopping(**_):  # the time limit: users then finish the request they are in (--stop-timeout)
    _window["stopped"] = time.time()


@events.request.add_listener
def _timed(name, response_time, exception, **_):
    _requests.append([name, float(response_time), "" if exception is None else str(exception)[:300], time.time()])


@events.test_stop.add_listener
def _stopped(**_):
    out = os.environ.get("LOAD_BENCH_TIMES")
    if out:
        Path(out).write_text(json.dumps({**_window, "requests": _requests}))


def _check(response, want: int, what: str = "") -> None:
    """Mark a response failed unless it has the wanted status (and, for a match, some matches)."""
    if response.status_code != want:
        response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
    elif what == "matches" and not response.json().get("matches"):
        response.failure("no matches")
    else:
        response.success()


class MatchUser(FastHttpUser):
    """POST /v1/match, k=10, a random query text, explain on or off at random."""

    fixed_count = int(os.environ.get("LOAD_BENCH_MATCH_USERS", "1"))
    wait_time = constant(0)
    network_timeout = 300.0
    connection_timeout = 60.0

    @task
    def match(self):
        explain = random.random() < 0.5
        body = {"query": {"text": random.choice(QUERIES)}, "k": 10, "explain": explain}
        name = "match explain" if explain else "match no-explain"
        with self.client.post("/v1/match", json=body, headers=HEADERS, name=name, catch_response=True) as r:
            _check(r, 200, "matches")


class ReadUser(FastHttpUser):
    """GET /v1/organisations/<id> of a random stored organisation (3 in 4), or the next list page of 50."""

    fixed_count = int(os.environ.get("LOAD_BENCH_READ_USERS", "1"))
    wait_time = constant(0)
    network_timeout = 300.0
    connection_timeout = 60.0

    def on_start(self):
        self.cursor = None
        self.pages = 0

    @task(3)
    def read(self):
        with self.client.get(f"/v1/organisations/{random.choice(IDS)}", headers=HEADERS, name="read by id",
                             catch_response=True) as r:
            _check(r, 200)

    @task(1)
    def list_page(self):
        path = "/v1/organisations?limit=50" + (f"&cursor={self.cursor}" if self.cursor else "")
        with self.client.get(path, headers=HEADERS, name="list", catch_response=True) as r:
            _check(r, 200)
            cursor = r.json().get("next_cursor") if r.status_code == 200 else None
        self.pages += 1
        # Walk forward page by page; start again from the first page after 20 pages or at the end.
        self.cursor = cursor if cursor and self.pages % 20 else None


class WriterUser(FastHttpUser):
    """One request a second: PATCH a description, PUT a whole profile, or a bulk upsert of 3, in turn, over the
    fixed set of organisations in writer.json; every one changes a description, so it is re-embedded and each
    worker's indexes sync. bench/load.py puts those organisations back as they were at the end."""

    fixed_count = 1
    wait_time = constant_pacing(1.0)
    network_timeout = 300.0
    connection_timeout = 60.0

    def on_start(self):
        self.rng = random.Random(SEED)
        self.n = 0

    def _edited(self, org: dict) -> dict:
        return {**org, "description": f"{org.get('description', '')} (load bench edit {self.n})".strip()}

    @task
    def write(self):
        self.n += 1
        op = self.n % 3
        if op == 0:
            org = self.rng.choice(WRITER)
            with self.client.patch(f"/v1/organisations/{org['id']}", json={"description": self._edited(org)["description"]},
                                   headers=HEADERS, name="write PATCH", catch_response=True) as r:
                _check(r, 200)
        elif op == 1:
            org = self.rng.choice(WRITER)
            with self.client.put(f"/v1/organisations/{org['id']}", json=self._edited(org), headers=HEADERS,
                                 name="write PUT", catch_response=True) as r:
                _check(r, 200)
        else:
            items = [self._edited(o) for o in self.rng.sample(WRITER, 3)]
            with self.client.post("/v1/organisations/bulk", json={"items": items}, headers=HEADERS, name="write bulk of 3",
                                  catch_response=True) as r:
                _check(r, 200)
