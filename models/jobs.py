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
import uuid

from sqlalchemy import and_, func, insert, or_, select, update

from models.store import Store, _iso, utcnow
from models.tables import job_results, jobs


class JobStore:
    def __init__(self, store: Store):
        self.store = store

    def create(self, kind: str, params: dict, total: int, errors: list[dict]) -> dict:
        now = utcnow()
        job_id = f"job-{uuid.uuid4().hex[:20]}"
        status = "queued" if total else "done"
        with self.store.engine.begin() as conn:
            conn.execute(insert(jobs).values(id=job_id, tenant=self.store.tenant, kind=kind, status=status, params=params, errors=errors,
                                             total=total, done=0, created_at=now, updated_at=now))
        return self.get(job_id)

    def _mine(self, job_id: str):
        return (jobs.c.id == job_id, jobs.c.tenant == self.store.tenant)

    def get(self, job_id: str) -> dict | None:
        with self.store.engine.connect() as conn:
            row = conn.execute(select(jobs).where(*self._mine(job_id))).first()
        return _public(row) if row is not None else None

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
            if conn.execute(select(jobs.c.id).where(*self._mine(job_id))).first() is None:
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
            done = conn.execute(select(func.count()).select_from(job_results).where(job_results.c.job_id == job_id)).scalar_one()
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(
                done=done, updated_at=now, lease_until=now + dt.timedelta(seconds=lease_s)))

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
            if conn.execute(select(jobs.c.id).where(*self._mine(job_id))).first() is None:
                return []
            rows = conn.execute(select(job_results.c.line, job_results.c.result)
                                .where(job_results.c.job_id == job_id).order_by(job_results.c.line))
            return [(r.line, r.result) for r in rows]


def _public(row) -> dict:
    return {
        "id": row.id,
        "kind": row.kind,
        "status": row.status,
        "progress": {"done": row.done, "total": row.total,
                     "fraction": round(row.done / row.total, 4) if row.total else 1.0},
        "errors": row.errors,
        "message": row.message,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
    }
