"""/v1/jobs: batch-match jobs. POST queues one (202), GET reports status and progress, /result the rows.

The jobs run in a separate worker process (``python -m matcher worker``; gunicorn's master starts one
unless MATCHER_JOB_RUNNER=0), never in the request workers.
"""
from __future__ import annotations

from flask import Blueprint, url_for

from matcher import jobs
from models.errors import NotFinished, NotFoundError
from models.jobs import JobStore
from service.api import engine, json_body
from service.retries import create_once

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")


def _job(job_id: str) -> dict:
    job = JobStore(engine().store).get(job_id)
    if job is None:
        raise NotFoundError("job", job_id, field="id", problem="unknown job id")
    return job


@bp.post("/batch-match")
def create_batch_match():
    return create_once(lambda save: jobs.submit(engine(), json_body(), on_write=save),
                       lambda job: (job, {"Location": url_for("jobs.read", job_id=job["id"])}), 202)


@bp.get("/<job_id>")
def read(job_id):
    return _job(job_id)


@bp.get("/<job_id>/result")
def result(job_id):
    job = _job(job_id)
    if job["status"] != "done":
        raise NotFinished("job", job_id, job["status"])
    return jobs.result(engine(), job_id)
