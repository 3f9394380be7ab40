"""The batch page: upload a spreadsheet of queries, follow the job's progress, see its bad rows, download results.

The file is read as ``python -m matcher batch`` reads it (CSV, JSONL, JSON or XLSX, one query a row) and queued
with ``matcher.jobs.submit``, as POST /v1/jobs/batch-match queues a job, keeping each query's line in the file;
the job worker matches it. The job's page shows its progress bar, loaded again every second by console.js while
the job is queued or running, then its bad rows (line and problem) and the downloads of its result rows.

Scope: ``admin``, as the API's /v1/jobs (a job is up to 10,000 queries of the tenant's matching).
"""
from __future__ import annotations

from flask import redirect, render_template, request, url_for

from matcher import jobs
from matcher.batch import COLUMNS
from matcher.records import RecordError
from models.enums import EntityKind
from models.jobs import JobStore
from models.schemas import MAX_JOB_QUERIES, MAX_K
from service.api import engine
from service.console import bp, forms
from service.console.errors import ENGINE_ERRORS, ConsoleError, details_of, field_errors, is_fragment
from service.console.exports import FORMATS, download
from service.console.files import ACCEPT, read_upload
from service.console.session import needs

# Where the form's inputs sit in a job request; a bad row's problems are listed with its line instead.
FIELDS = {"queries": "queries", "file": "queries", "target": "target", "k": "k", "filters.types": "types",
          "filters.countries": "countries", "filters.status": "status"}
PREVIEW = 5  # result rows shown on a finished job's page
POLL_MS = 1000


def _form() -> dict:
    """The form's values as typed (the defaults on a GET)."""
    f = request.form
    return {"target": f.get("target") or EntityKind.organisations.value, "k": f.get("k") or "10",
            "types": f.getlist("types"), "countries": f.get("countries", ""), "status": f.get("status") or "open"}


def _render(form: dict, errors: dict, bad_rows: list[dict], status: int = 200):
    return render_template("console/batch.html", form=form, errors=errors, bad_rows=bad_rows, accept=ACCEPT,
                           recent=JobStore(engine().store).recent(), max_rows=MAX_JOB_QUERIES), status


@bp.route("/batch", methods=["GET", "POST"])
@needs("admin")
def batch():
    """The upload form (and the tenant's recent jobs); a good upload queues a job and opens its page."""
    form, errors = _form(), {}
    if request.method == "GET":
        return _render(form, errors, [])
    k = forms.number(form["k"], "k", errors, default=10, low=1, high=MAX_K)
    target = forms.choice(form["target"], EntityKind, "target", errors)
    rows = read_upload("queries", errors) or []
    good = [(line, record) for line, record in rows if not isinstance(record, RecordError)]
    unreadable = [record for _, record in rows if isinstance(record, RecordError)]
    bad_rows: list[dict] = []
    if rows:
        if not good:
            errors["queries"] = "no row of the file could be read: see the rows below"
            bad_rows = [{"field": "file", "problem": e.problem, "line": e.line} for e in unreadable]
        elif len(good) > MAX_JOB_QUERIES:
            errors["queries"] = f"has {len(good):,} queries; a job takes at most {MAX_JOB_QUERIES:,}: split the file"
    if errors:
        return _render(form, errors, bad_rows, 400)
    orgs = target == EntityKind.organisations.value
    body = {"queries": [record for _, record in good], "target": target, "k": k, "explain": True,
            "filters": {"types": form["types"] if orgs else [], "countries": forms.words(form["countries"]),
                        **({} if orgs else {"status": form["status"]})}}
    try:
        job = jobs.submit(engine(), body, lines=[line for line, _ in good], unreadable=unreadable)
    except ENGINE_ERRORS as exc:
        details = details_of(exc)
        bad_rows = [d for d in details if "line" in d]
        errors = field_errors([d for d in details if "line" not in d], FIELDS)
        if bad_rows:
            errors["queries"] = "no row of the file is a valid query: see the rows below"
        return _render(form, errors, bad_rows, 400)
    return redirect(url_for("console.batch_job", job_id=job["id"]))


def _job(job_id: str) -> dict:
    job = JobStore(engine().store).get(job_id)
    if job is None:
        raise ConsoleError(404, "Not found", f"There is no batch job with id '{job_id}' in this tenant.")
    return job


@bp.get("/batch/<job_id>")
@needs("admin")
def batch_job(job_id):
    """A job's status and progress (a part of the page console.js reloads while it runs), then its bad rows and
    downloads."""
    job = _job(job_id)
    result = jobs.result(engine(), job_id) if job["status"] == "done" else None
    errors = result["errors"] if result else job["errors"]
    return render_template("console/batch_job.html", job=job, result=result, bad_rows=errors,
                           preview=result["rows"][:PREVIEW] if result else [], formats=list(FORMATS),
                           running=job["status"] in ("queued", "running"), poll_ms=POLL_MS, fragment=is_fragment())


@bp.get("/batch/<job_id>/results.<fmt>")
@needs("admin")
def batch_results(job_id, fmt):
    """A finished job's result rows as CSV or XLSX: the columns of ``python -m matcher batch``."""
    if fmt not in FORMATS:
        raise ConsoleError(404, "Not found", "Results download as .csv or .xlsx.")
    job = _job(job_id)
    if job["status"] != "done":
        raise ConsoleError(409, "Not finished yet", f"This job is {job['status']}: its results can be downloaded "
                                                    "once it is done.")
    rows = ([row[c] for c in COLUMNS] for row in jobs.result(engine(), job_id)["rows"])
    return download(COLUMNS, rows, fmt, f"batch-{job_id}")
