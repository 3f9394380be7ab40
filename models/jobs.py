"""Persistence of batch jobs: state, progress and results in the store's database (tables ``jobs`` and
``job_results``), so a job survives a restart and any worker process can take it over.

A worker claims a queued job, or a running one whose lease ran out (its worker died), in one conditional
UPDATE; it writes each chunk's results together with the job's progress and a renewed lease in one
transaction, so a resumed job skips exactly the queries whose results are stored.

A JobStore sees the jobs of its store's tenant; only ``claim`` (the worker's) looks at every tenant's queue,
and the claimed job says whose it is.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid

from sqlalchemy import String, and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from models.enums import EntityKind
from models.tables import job_results, jobs
from models.times import iso, utcnow


class JobStore:
    def __init__(self, store):
        self.store = store  # a models.store.Store, which imports this module (its deletes call erase_from_jobs)

    def create(self, kind: str, params: dict, total: int, errors: list[dict], on_write=None) -> dict:
        """Queue a job; ``on_write(conn, job)`` runs in the same transaction (a failure there stores nothing)."""
        now = utcnow()
        job_id = f"job-{uuid.uuid4().hex[:20]}"
        status = "queued" if total else "done"
        with self.store.engine.begin() as conn:
            conn.execute(insert(jobs).values(id=job_id, tenant=self.store.tenant, kind=kind, status=status, params=params, errors=errors,
                                             total=total, done=0, created_at=now, updated_at=now))
            if on_write is not None:
                on_write(conn, _public(conn.execute(select(jobs).where(*self._mine(job_id))).first()))
        return self.get(job_id)

    def _mine(self, job_id: str):
        return (jobs.c.id == job_id, jobs.c.tenant == self.store.tenant)

    def _owns(self, conn, job_id: str) -> bool:
        """Whether the job exists and is this store's tenant's."""
        return conn.execute(select(jobs.c.id).where(*self._mine(job_id))).first() is not None

    def get(self, job_id: str) -> dict | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(jobs).where(*self._mine(job_id))).first()
        return _public(row) if row is not None else None

    def recent(self, limit: int = 5) -> list[dict]:
        """The tenant's newest jobs, newest first."""
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(jobs).where(jobs.c.tenant == self.store.tenant)
                                .order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit)).all()
        return [_public(row) for row in rows]

    def params(self, job_id: str) -> dict:
        with self.store.engine.connect() as conn:
            return conn.execute(select(jobs.c.params).where(*self._mine(job_id))).scalar_one()

    def claim(self, lease_s: int) -> dict | None:
        """Take the oldest queued job of any tenant, or a running one whose worker stopped renewing its lease;
        the job's ``tenant`` says whose it is."""
        now = utcnow()
        claimable = or_(jobs.c.status == "queued", and_(jobs.c.status == "running", jobs.c.lease_until < now))
        with self.store.engine.connect() as conn:
            candidates = conn.execute(select(jobs.c.id).where(claimable).order_by(jobs.c.created_at, jobs.c.id).limit(5)).scalars().all()
        for job_id in candidates:
            with self.store.engine.begin() as conn:
                taken = conn.execute(
                    update(jobs).where(jobs.c.id == job_id, claimable)
                    .values(status="running", lease_until=now + dt.timedelta(seconds=lease_s), updated_at=now)
                ).rowcount
            if taken:
                with self.store.engine.connect() as conn:
                    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
                return {**_public(row), "tenant": row.tenant}
        return None

    def done_lines(self, job_id: str) -> set[int]:
        with self.store.engine.connect() as conn:
            if not self._owns(conn, job_id):
                return set()
            return set(conn.execute(select(job_results.c.line).where(job_results.c.job_id == job_id)).scalars())

    def add_results(self, job_id: str, results: list[tuple[int, list | str]], lease_s: int) -> None:
        """Store finished queries and the job's progress, and renew its lease, in one transaction."""
        now = utcnow()
        with self.store.engine.begin() as conn:
            # Two workers can hold one job when the first outran its lease: whichever stores a line first wins,
            # and the other's copy of that line (the same query, matched the same way) is dropped.
            stored = set(conn.execute(select(job_results.c.line).where(
                job_results.c.job_id == job_id, job_results.c.line.in_([line for line, _ in results]))).scalars())
            fresh = [{"job_id": job_id, "line": line, "result": r} for line, r in results if line not in stored]
            if fresh:
                conn.execute(insert(job_results), fresh)
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                done=_results_count(conn, job_id), updated_at=now, lease_until=now + dt.timedelta(seconds=lease_s)))

    def finish(self, job_id: str, status: str, message: str | None = None) -> None:
        with self.store.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                status=status, message=message, updated_at=utcnow(), lease_until=None))

    def release(self, job_id: str) -> None:
        """A worker that stops cleanly hands its job back to the queue."""
        with self.store.engine.begin() as conn:
            conn.execute(update(jobs).where(jobs.c.id == job_id, jobs.c.status == "running").values(
                status="queued", updated_at=utcnow(), lease_until=None))

    def results(self, job_id: str) -> list[tuple[int, list | str]]:
        with self.store.engine.connect() as conn:
            if not self._owns(conn, job_id):
                return []
            rows = conn.execute(select(job_results.c.line, job_results.c.result)
                                .where(job_results.c.job_id == job_id).order_by(job_results.c.line))
            return [(r.line, r.result) for r in rows]


def _results_count(conn: Connection, job_id: str) -> int:
    """How many of the job's queries have a stored result (its progress)."""
    return conn.execute(select(func.count()).select_from(job_results).where(job_results.c.job_id == job_id)).scalar_one()


def erase_from_jobs(conn: Connection, tenant: str, kind: EntityKind, entity_id: str) -> None:
    """Batch jobs keep no trace of the entity: a query that was it (by id, or its profile) is dropped from the
    job's parameters and its result reported as erased (a job still queued or running skips it), its id
    leaves every exclusion list, and results lose the rows that matched it."""
    erased = f"the {kind.value[:-1]} this query named was deleted"
    needle = json.dumps(entity_id)
    for job_id in _job_ids_naming(conn, tenant, entity_id):
        params = conn.execute(select(jobs.c.params).where(jobs.c.id == job_id)).scalar_one()
        kept, dropped = [], set()
        for item in params.get("items", []):
            if _names(item, kind, entity_id):
                dropped.add(item["line"])
                continue
            _drop_excluded(item["request"].get("filters"), entity_id)
            kept.append(item)
        _drop_excluded(params.get("filters"), entity_id)
        conn.execute(update(jobs).where(jobs.c.id == job_id).values(params={**params, "items": kept}))
        matched_kind = params.get("target") == kind.value
        of_job = job_results.c.job_id == job_id
        stored = set(conn.execute(select(job_results.c.line).where(of_job)).scalars())
        touched = or_(job_results.c.result.cast(String).contains(needle), job_results.c.line.in_(sorted(dropped)))
        for row in conn.execute(select(job_results.c.line, job_results.c.result).where(of_job, touched)).all():
            # result rows: [query_line, query_id, rank, match_id, ...] (matcher/batch.py COLUMNS)
            if row.line in dropped:
                result = erased
            elif matched_kind and isinstance(row.result, list):
                result = [r for r in row.result if r[3] != entity_id]
            else:
                continue
            if result != row.result:
                conn.execute(update(job_results).where(job_results.c.job_id == job_id, job_results.c.line == row.line)
                             .values(result=result))
        fresh = [{"job_id": job_id, "line": line, "result": erased} for line in sorted(dropped - stored)]
        if fresh:
            conn.execute(insert(job_results), fresh)
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(done=_results_count(conn, job_id)))


def _job_ids_naming(conn: Connection, tenant: str, entity_id: str) -> list[str]:
    """The ids of the tenant's jobs whose parameters or results hold the id (a candidate superset: a JSON text
    search)."""
    needle = json.dumps(entity_id)
    tenant_jobs = select(jobs.c.id).where(jobs.c.tenant == tenant)
    hit = set(conn.execute(tenant_jobs.where(jobs.c.params.cast(String).contains(needle))).scalars())
    hit |= set(conn.execute(select(job_results.c.job_id).where(
        job_results.c.job_id.in_(tenant_jobs), job_results.c.result.cast(String).contains(needle))).scalars())
    return sorted(hit)


def _names(item: dict, kind: EntityKind, entity_id: str) -> bool:
    """Whether a job's query is the entity: by its id, or its profile (a text query with its id)."""
    query = item["request"]["query"]
    key = "organisation_id" if kind is EntityKind.organisations else "challenge_id"
    return query.get(key) == entity_id or (query.get("text") is not None and item.get("query_id") == entity_id)


def jobs_naming(conn: Connection, tenant: str, kind: EntityKind, entity_id: str) -> list[dict]:
    """What the tenant's batch jobs hold of an entity (an export): each job that names it, with the queries that
    were it, whether it excluded it, and the results of its queries and the result rows that matched it."""
    found = []
    for job_id in _job_ids_naming(conn, tenant, entity_id):
        row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
        items = row.params.get("items", [])
        queries = [item for item in items if _names(item, kind, entity_id)]
        lines, target = {item["line"] for item in queries}, row.params.get("target") == kind.value
        excluded = any(entity_id in ((f or {}).get("exclude_ids") or [])
                       for f in [row.params.get("filters"), *(item["request"].get("filters") for item in items)])
        results = []
        for line, result in conn.execute(select(job_results.c.line, job_results.c.result)
                                         .where(job_results.c.job_id == job_id).order_by(job_results.c.line)):
            if line not in lines:  # rows: [query_line, query_id, rank, match_id, ...] (matcher/batch.py COLUMNS)
                result = [r for r in result if r[3] == entity_id] if target and isinstance(result, list) else []
            if line in lines or result:
                results.append({"line": line, "result": result})
        if queries or excluded or results:
            found.append({**_public(row), "queries": queries, "excludes_it": excluded, "results": results})
    return found


def _drop_excluded(filters: dict | None, entity_id: str) -> None:
    """Take an id out of a stored request's exclude_ids (in place)."""
    if filters and entity_id in (filters.get("exclude_ids") or []):
        filters["exclude_ids"] = [i for i in filters["exclude_ids"] if i != entity_id]


def _public(row) -> dict:
    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "progress": {"done": row.done, "total": row.total,
                     "fraction": round(row.done / row.total, 4) if row.total else 1.0},
        "errors": row.errors,
        "message": row.message,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
    }
