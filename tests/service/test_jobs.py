"""Batch-match jobs: validation, the worker, a worker that dies part-way, and a real gunicorn restart."""
import datetime as dt
import time

import pytest
import requests
from sqlalchemy import update

from matcher.jobs import JobWorker, result, submit
from matcher.records import RecordError
from matcher.tables_io import read_table
from models.enums import EntityKind
from models.jobs import JobStore
from models.schemas import MatchRequest
from models.tables import jobs as jobs_table
from tests.conftest import ORGS, empty_db_url
from tests.service.test_gunicorn import free_port, service_env, start_gunicorn, stop_gunicorn


@pytest.fixture
def stocked(engine):
    engine.upsert_many(EntityKind.organisations, ORGS)
    return engine


def test_job_lifecycle_in_process(client, stocked):
    body = {"queries": [{"text": "controllers that balance solar peaks in microgrids"}, {"organisation_id": "aquasense"}, {"organisation_id": "nobody"},
                        {"txt": "typo"}], "k": 3}
    r = client.post("/v1/jobs/batch-match", json=body)
    assert r.status_code == 202, r.get_json()
    job = r.get_json()
    assert r.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["progress"] == {"done": 0, "total": 2, "fraction": 0.0}
    assert [e["field"] for e in job["errors"]] == ["queries[2].organisation_id", "queries[3].text"]
    early = client.get(f"/v1/jobs/{job['id']}/result")
    assert early.status_code == 409 and early.get_json()["error"]["code"] == "not_finished"
    JobWorker(stocked).run_forever(once=True)
    status = client.get(f"/v1/jobs/{job['id']}").get_json()
    assert status["status"] == "done" and status["progress"]["done"] == 2
    result = client.get(f"/v1/jobs/{job['id']}/result").get_json()
    assert [(row["query_line"], row["rank"]) for row in result["rows"]] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    assert result["rows"][0]["match_id"] == "voltgrid" and result["rows"][0]["explanation"]
    assert len(result["errors"]) == 2


@pytest.mark.parametrize("body, field", [
    ({"queries": []}, "queries"),
    ({"queries": [{"text": "x"}], "k": 0}, "k"),
    ({"queries": [{"text": "x"}], "target": "people"}, "target"),
    ({"queries": [{"text": "x"}], "colour": "red"}, "colour"),
    ({"queries": [{"organisation_id": "nobody"}]}, "queries[0].organisation_id"),
    ([1, 2], "body"),
])
def test_bad_job_requests_are_400_naming_the_field(client, stocked, body, field):
    r = client.post("/v1/jobs/batch-match", json=body)
    assert r.status_code == 400
    assert field in [d["field"] for d in r.get_json()["error"]["details"]]


def test_unknown_job_is_404(client):
    for path in ("/v1/jobs/job-nope", "/v1/jobs/job-nope/result"):
        r = client.get(path)
        assert r.status_code == 404 and r.get_json()["error"]["details"][0]["field"] == "id"


def test_a_job_read_from_a_file_numbers_its_queries_by_their_lines(stocked, tmp_path):
    """As the console queues an uploaded file: rows and errors name the file's lines, unreadable rows included."""
    (tmp_path / "q.jsonl").write_text('{"text": "controllers that balance solar peaks"}\n\n{broken\n'
                                      '{"organisation_id": "nobody"}\n{"organisation_id": "aquasense"}\n')
    rows = list(read_table(tmp_path / "q.jsonl"))
    good = [(line, r) for line, r in rows if not isinstance(r, RecordError)]
    job = submit(stocked, {"queries": [r for _, r in good], "k": 2}, lines=[line for line, _ in good],
                 unreadable=[r for _, r in rows if isinstance(r, RecordError)])
    assert [(e["field"], e["line"]) for e in job["errors"]] == [("file", 3), ("queries[1].organisation_id", 4)]
    assert job["errors"][0]["problem"].startswith("not valid JSON")
    JobWorker(stocked).run_forever(once=True)
    done = result(stocked, job["id"])
    assert [(r["query_line"], r["rank"]) for r in done["rows"]] == [(1, 1), (1, 2), (5, 1), (5, 2)]
    assert done["rows"][2]["query_id"] == "aquasense"


def test_a_job_whose_worker_died_is_resumed_by_another(client, stocked):
    queries = [{"text": f"{o['description']} Case {i}."} for i in range(5) for o in ORGS]  # 35 queries, 3 chunks
    job_id = client.post("/v1/jobs/batch-match", json={"queries": queries, "k": 2}).get_json()["id"]
    store = JobStore(stocked.store)
    first = JobWorker(stocked)
    claimed = store.claim(lease_s=600)
    assert claimed["id"] == job_id and store.claim(lease_s=600) is None  # held: nobody else takes it
    real = first.engine.match_many
    calls = []

    def dies_after_one_chunk(requests_):
        if calls:
            raise SystemExit("killed")
        calls.append(1)
        return real(requests_)

    first.engine.match_many = dies_after_one_chunk
    with pytest.raises(SystemExit):
        first.run(job_id, claimed["tenant"])
    first.engine.match_many = real
    assert store.get(job_id)["status"] == "running" and store.get(job_id)["progress"]["done"] == 16
    with stocked.store.engine.begin() as conn:  # its lease runs out
        conn.execute(update(jobs_table).values(lease_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)))
    JobWorker(stocked).run_forever(once=True)
    job = store.get(job_id)
    assert job["status"] == "done" and job["progress"]["done"] == 35
    rows = client.get(f"/v1/jobs/{job_id}/result").get_json()["rows"]
    assert len(rows) == 70 and len({(r["query_line"], r["rank"]) for r in rows}) == 70


def _gunicorn(data, port, db_url, job_runner: str):
    env = service_env(data, port, db_url=db_url, workers=1, job_runner=job_runner, job_poll_s=0.2)
    return start_gunicorn(env, data / f"gunicorn-{job_runner}.log")


@pytest.mark.slow
def test_job_survives_a_restart_and_runs_in_the_masters_job_worker(tmp_path):
    """Queued while no job worker runs; gunicorn restarts with its job worker, which finishes the job."""
    data = tmp_path / "data"
    db_url = empty_db_url(data)
    port = free_port()
    proc, base, log = _gunicorn(data, port, db_url, job_runner="0")
    try:
        assert requests.post(f"{base}/v1/organisations/bulk", json={"items": ORGS}, timeout=120).status_code == 200
        r = requests.post(f"{base}/v1/jobs/batch-match", json={"queries": [{"text": "leak sensors"}, {"id": "lumen"}], "k": 2},
                          timeout=60)
        assert r.status_code == 202
        job_id = r.json()["id"]
        time.sleep(1)
        assert requests.get(f"{base}/v1/jobs/{job_id}", timeout=30).json()["status"] == "queued"  # no request worker ran it
    finally:
        stop_gunicorn(proc, log)
    proc, base, log = _gunicorn(data, port, db_url, job_runner="1")
    try:
        deadline = time.time() + 120
        while (job := requests.get(f"{base}/v1/jobs/{job_id}", timeout=30).json())["status"] != "done":
            assert job["status"] in ("queued", "running") and time.time() < deadline, job
            time.sleep(0.3)
        result = requests.get(f"{base}/v1/jobs/{job_id}/result", timeout=30).json()
        assert [r["match_id"] for r in result["rows"]][:1] == ["aquasense"] and len(result["rows"]) == 4
        assert "job worker started" in open(log.name).read()
    finally:
        stop_gunicorn(proc, log)


def test_two_workers_on_one_job_store_each_line_once(client, stocked):
    """A worker that outran its lease and the one that took the job over both store results: no line twice,
    and the job still finishes."""
    job_id = client.post("/v1/jobs/batch-match", json={"queries": [{"text": o["description"]} for o in ORGS], "k": 2}).get_json()["id"]
    store = JobStore(stocked.store)
    claimed = store.claim(lease_s=600)
    from matcher.batch import match_chunk

    params = store.params(job_id)
    todo = [(i["line"], i["query_id"], MatchRequest.model_validate(i["request"])) for i in params["items"]]
    store.add_results(job_id, match_chunk(stocked, todo[:4]), lease_s=600)
    store.add_results(job_id, match_chunk(stocked, todo[2:]), lease_s=600)  # the other worker: lines 3-4 again
    store.finish(claimed["id"], "done")
    assert sorted(line for line, _ in store.results(job_id)) == list(range(1, len(ORGS) + 1))
    assert store.get(job_id)["progress"]["done"] == len(ORGS)
