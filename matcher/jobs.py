"""Batch-match jobs: created by the API, run by a worker process outside the request workers.

``submit`` validates a job's queries (the bad ones are kept as the job's errors, by position) and queues it
in the store. ``JobWorker`` (``python -m matcher worker``, which gunicorn's master starts by default) claims
queued jobs, matches them a chunk at a time with ``Engine.match_many`` and stores each chunk's results with
the job's progress. A worker that is killed loses at most the chunk in flight: its lease runs out
(MATCHER_JOB_LEASE_S) and the next worker resumes the job where the stored results end.
"""
from __future__ import annotations

import logging
import re
import signal
import time

from matcher.batch import CHUNK, COLUMNS, match_chunk, plan
from matcher.records import RecordError
from models.jobs import JobStore
from models.schemas import BatchJobRequest, InvalidInput, MatchRequest, parse

log = logging.getLogger(__name__)
BATCH_MATCH = "batch-match"


def submit(engine, body, lines: list[int] | None = None, unreadable: list[RecordError] = (), on_write=None) -> dict:
    """Validate a batch-match job and queue it; 400 (InvalidInput) when the request or every query is bad.

    A query's line is its 1-based position, or, for queries read from a file (the console's uploads), its
    ``lines`` in that file, as the batch command numbers them; the file's ``unreadable`` rows join the job's
    errors. Result rows name a query by its line (query_line), and each error by its field and its line. Queries
    sent as JSON are read strictly, a file's rows laxly (models.schemas.parse). ``on_write(conn, job)`` runs in
    the transaction that stores the job."""
    request = parse(BatchJobRequest, body)
    from_file = lines is not None
    lines = list(lines or range(1, len(request.queries) + 1))
    if len(lines) != len(request.queries):
        raise ValueError(f"{len(lines)} lines for {len(request.queries)} queries")
    filters = request.filters.model_dump(mode="json")
    batch = plan(zip(lines, request.queries), engine.store, target=request.target, k=request.k,
                 filters=filters, explain=request.explain, strict=not from_file)
    position = {line: i for i, line in enumerate(lines)}
    errors = [_error(e, position.get(e.line)) for e in sorted([*unreadable, *batch.errors], key=lambda e: e.line)]
    if not batch.items:
        # A file's rows keep their line (the console shows it); a JSON body's are named by their field alone.
        raise InvalidInput(errors if from_file else [{"field": e["field"], "problem": e["problem"]} for e in errors],
                           "no query in this job is valid")
    params = {"target": request.target, "k": request.k, "filters": filters, "explain": request.explain,
              "items": [{"line": i.line, "query_id": i.query_id, "request": i.request.model_dump(mode="json")} for i in batch.items]}
    if lines != list(range(1, len(lines) + 1)):
        params["lines"] = lines
    return JobStore(engine.store).create(BATCH_MATCH, params, len(batch.items), errors, on_write=on_write)


def _error(error: RecordError, position: int | None) -> dict:
    """A bad query as a job error: its field in the request (``file`` for a row that could not be read), the
    problem and its line."""
    named = re.match(r"([A-Za-z_][\w.\[\]]*): (.*)", error.problem, re.S)
    field, problem = named.groups() if named else ("", error.problem)
    where = f"queries[{position}]" if position is not None else "file"
    return {"field": where + (f".{field}" if field else ""), "problem": problem.strip(), "line": error.line}


def result(engine, job_id: str) -> dict | None:
    """A finished job's rows (query_line is the query's line, see ``submit``), or None if there is no such job."""
    jobs = JobStore(engine.store)
    job = jobs.get(job_id)
    if job is None:
        return None
    rows, errors = [], list(job["errors"])
    position = {line: i for i, line in enumerate(jobs.params(job_id).get("lines") or [])}
    for line, res in jobs.results(job_id):
        if isinstance(res, str):
            errors.append({"field": f"queries[{position.get(line, line - 1)}]", "problem": res, "line": line})
        else:
            rows.extend(dict(zip(COLUMNS, r)) for r in res)
    return {"job": job, "rows": rows, "errors": errors}


class JobWorker:
    """Claims and runs queued jobs until told to stop (SIGTERM/SIGINT hand the current job back)."""

    def __init__(self, engine):
        self.engine = engine
        self.jobs = JobStore(engine.store)
        self.stopping = False

    def _stop(self, *_):
        self.stopping = True

    def run_forever(self, once: bool = False) -> None:
        self.engine.ensure_ready()
        if not once:
            signal.signal(signal.SIGTERM, self._stop)
            signal.signal(signal.SIGINT, self._stop)
        log.info("job worker ready")
        while not self.stopping:
            job = self.jobs.claim(self.engine.settings.job_lease_s)
            if job is None:
                if once:
                    return
                time.sleep(self.engine.settings.job_poll_s)
                continue
            self.run(job["id"], job["tenant"])

    def run(self, job_id: str, tenant: str) -> None:
        """Run one claimed job on its tenant's engine (its queries see that tenant's data only)."""
        engine = self.engine.for_tenant(tenant)
        settings, jobs = engine.settings, JobStore(engine.store)
        try:
            params = jobs.params(job_id)
            done = jobs.done_lines(job_id)
            todo = [(i["line"], i["query_id"], MatchRequest.model_validate(i["request"])) for i in params["items"] if i["line"] not in done]
            log.info("job %s: %d of %d queries to match", job_id, len(todo), len(params["items"]))
            for start in range(0, len(todo), CHUNK):
                if self.stopping:
                    jobs.release(job_id)
                    return
                jobs.add_results(job_id, match_chunk(engine, todo[start : start + CHUNK]), settings.job_lease_s)
            jobs.finish(job_id, "done")
        except Exception as exc:  # a job that cannot run is marked failed, and the worker goes on
            log.exception("job %s failed", job_id)
            jobs.finish(job_id, "failed", f"{exc.__class__.__name__}: {exc}"[:2000])
