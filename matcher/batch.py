"""Batch matching: every query of a file (or a job) against the organisations or the challenges.

A query row is one of
  - ``text``: free text;
  - ``challenge_id`` or ``organisation_id``: a stored entity; a row with only ``id`` is looked up as a
    challenge, then as an organisation;
  - a challenge profile (``title`` and ``description``) or an organisation profile (``name``, ``type``,
    ``description``), validated like an import and matched by its profile text (never with itself).

Results are one row per (query, match): query_line, query_id, rank, match_id, match_name, match_type,
match_country, score, explanation. Queries run in chunks through ``Engine.match_many``, either in this
process (the default) or on Ray Data (``runner="ray"``: ``map_batches`` with an actor that holds its own
engine). Each finished query is appended to a checkpoint file beside the output, so a killed run restarted
with the same arguments skips what is done; the output is written, in input order, when all are done.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

from matcher.records import RecordError
from matcher.text import entity_text
from models.enums import EntityKind
from models.schemas import InvalidInput, MatchRequest, new_id, parse, validate_entity
from models.store import NotFoundError

COLUMNS = ["query_line", "query_id", "rank", "match_id", "match_name", "match_type", "match_country", "score", "explanation"]
CHUNK = 16  # queries per match_many call (text queries in a chunk are encoded together)
QUERY_FIELDS = ("text", "challenge_id", "organisation_id")


@dataclass
class BatchItem:
    line: int
    query_id: str
    request: MatchRequest


@dataclass
class BatchPlan:
    items: list[BatchItem] = field(default_factory=list)
    errors: list[RecordError] = field(default_factory=list)
    read: int = 0


def _query_of(record: dict, store, strict: bool) -> tuple[str, dict]:
    """(query id, MatchQuery body) of one input record; raises InvalidInput naming the field."""
    given = {k: record[k] for k in QUERY_FIELDS if record.get(k) not in (None, "")}
    if given:
        extra = set(record) - set(QUERY_FIELDS) - {"id"}
        if extra:
            raise InvalidInput([{"field": sorted(extra)[0], "problem": "unexpected beside text/challenge_id/organisation_id"}])
        query_id = record.get("id") or given.get("challenge_id") or given.get("organisation_id") or ""
        return str(query_id), given
    kind = EntityKind.challenges if "title" in record else EntityKind.organisations if (
        "name" in record or "description" in record) else None
    if kind is not None:  # a whole profile; without an id, one derived from its content (the same output each run)
        content = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str)
        doc = validate_entity(kind, {**record, "id": record.get("id") or new_id(kind, content)}, strict=strict)
        return doc["id"], {"text": entity_text(kind, doc)}
    if set(record) == {"id"}:
        entity_id = str(record["id"])
        for kind, key in ((EntityKind.challenges, "challenge_id"), (EntityKind.organisations, "organisation_id")):
            if store.existing_ids(kind, [entity_id]):
                return entity_id, {key: entity_id}
        raise InvalidInput([{"field": "id", "problem": f"no stored challenge or organisation with id '{entity_id}'"}])
    raise InvalidInput([{"field": "text", "problem": "give text, challenge_id, organisation_id, id, or a challenge/organisation profile"}])


def plan(records: Iterable[tuple[int, dict | RecordError]], store, *, target: str, k: int,
         filters: dict | None = None, explain: bool = True, strict: bool = False) -> BatchPlan:
    """Validate every query row; the good ones become MatchRequests, the bad ones errors with their line.
    Rows are read laxly (a CSV cell "2023" is a year); ``strict`` for queries sent in a JSON body."""
    result = BatchPlan()
    stored_ids: dict[EntityKind, list[tuple[int, str]]] = {EntityKind.challenges: [], EntityKind.organisations: []}
    for line, record in records:
        result.read += 1
        if isinstance(record, RecordError):
            result.errors.append(record)
            continue
        try:
            query_id, query = _query_of(record, store, strict)
            exclude = list((filters or {}).get("exclude_ids", []))
            if "text" in query and query_id and ("title" in record or "name" in record):
                exclude.append(query_id)  # a profile is never matched with its stored self
            body = {"query": query, "target": target, "k": k, "explain": explain,
                    "filters": {**(filters or {}), "exclude_ids": exclude}}
            request = parse(MatchRequest, body, strict=strict)
        except InvalidInput as exc:
            result.errors.extend(RecordError(line, f"{d['field']}: {d['problem']}") for d in exc.details)
            continue
        if request.query.challenge_id:
            stored_ids[EntityKind.challenges].append((line, request.query.challenge_id))
        elif request.query.organisation_id:
            stored_ids[EntityKind.organisations].append((line, request.query.organisation_id))
        result.items.append(BatchItem(line, query_id, request))
    missing_lines = set()
    for kind, pairs in stored_ids.items():
        present = store.existing_ids(kind, [i for _, i in pairs])
        for line, entity_id in pairs:
            if entity_id not in present:
                field_name = "challenge_id" if kind is EntityKind.challenges else "organisation_id"
                result.errors.append(RecordError(line, f"{field_name}: no {kind.value[:-1]} with id '{entity_id}'"))
                missing_lines.add(line)
    result.items = [i for i in result.items if i.line not in missing_lines]
    result.errors.sort(key=lambda e: e.line)
    return result


def result_rows(line: int, query_id: str, result: dict) -> list[list]:
    rows = []
    for rank, m in enumerate(result["matches"], start=1):
        explanation = (m.get("explanation") or {}).get("summary", "")
        rows.append([line, query_id, rank, m["id"], m["name"], m.get("type") or "", m.get("country") or "", m["score"], explanation])
    return rows


def match_chunk(engine, items: list[tuple[int, str, MatchRequest]]) -> list[tuple[int, list[list] | str]]:
    """(line, rows) for each query, or (line, problem) for one whose stored entity vanished meanwhile."""
    try:
        results = engine.match_many([r for _, _, r in items])
        return [(line, result_rows(line, qid, res)) for (line, qid, _), res in zip(items, results)]
    except NotFoundError:  # one of them was deleted after planning: answer them one by one
        out = []
        for line, qid, request in items:
            try:
                out.append((line, result_rows(line, qid, engine.match(request))))
            except NotFoundError as exc:
                out.append((line, str(exc)))
        return out


# --- runners --------------------------------------------------------------------------------------

def run_local(engine, items: list[BatchItem], on_done: Callable[[int, list | str], None]) -> None:
    """Match in this process, a chunk at a time."""
    for start in range(0, len(items), CHUNK):
        chunk = [(i.line, i.query_id, i.request) for i in items[start : start + CHUNK]]
        for line, rows in match_chunk(engine, chunk):
            on_done(line, rows)


class RayMatcher:
    """A Ray Data actor: loads its own engine (model, store, indexes) once, then matches batches of queries."""

    def __init__(self, settings):
        from matcher.engine import Engine

        self.engine = Engine(settings).open()
        self.engine.load_indexes()

    def __call__(self, batch: dict) -> dict:
        items = [(int(line), str(qid), MatchRequest.model_validate_json(body))
                 for line, qid, body in zip(batch["line"], batch["query_id"], batch["request"])]
        done = match_chunk(self.engine, items)
        return {"line": [line for line, _ in done], "result": [json.dumps(rows) for _, rows in done]}


def run_ray(settings, items: list[BatchItem], on_done: Callable[[int, list | str], None], actors: int = 1) -> None:
    """Match on Ray Data: a dataset of query rows, ``map_batches`` over a pool of ``RayMatcher`` actors.

    Connects to the cluster named by RAY_ADDRESS, or starts a local Ray when it is unset. Every node needs
    this project installed, the model, and the store (use a PostgreSQL MATCHER_DB_URL on a cluster)."""
    import logging

    import ray

    logging.getLogger("ray.data").setLevel(logging.WARNING)
    if not items:
        return
    if not ray.is_initialized():
        root = str(Path(__file__).resolve().parents[1])
        if os.environ.get("RAY_ADDRESS"):
            ray.init(runtime_env={"working_dir": root, "excludes": [".venv", "var", ".git", "bench/out"]})
        else:
            ray.init(num_cpus=max(1, actors), include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
                     runtime_env={"env_vars": {"PYTHONPATH": root}})
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False  # the caller's bar counts finished queries
    ds = ray.data.from_items([{"line": i.line, "query_id": i.query_id, "request": i.request.model_dump_json()} for i in items])
    ds = ds.map_batches(RayMatcher, fn_constructor_kwargs={"settings": settings}, batch_size=CHUNK,
                        compute=ray.data.ActorPoolStrategy(size=actors), batch_format="numpy")
    for row in ds.iter_rows():
        result = json.loads(row["result"])
        on_done(int(row["line"]), result)


# --- files: checkpoint, resume, output ------------------------------------------------------------

def fingerprint(queries_path: Path, **args) -> str:
    with open(queries_path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
    digest.update(json.dumps(args, sort_keys=True, default=str).encode())
    return digest.hexdigest()


class Checkpoint:
    """``<out>.partial``: a header line with the run's fingerprint, then one JSON line per finished query.

    Each line is flushed and fsynced; a line cut short by a kill is dropped when the run resumes."""

    def __init__(self, out: Path, key: str):
        self.path = out.with_name(out.name + ".partial")
        self.key = key
        self.done: dict[int, list | str] = {}

    def open(self, restart: bool = False) -> Checkpoint:
        good = 0
        if self.path.exists() and not restart:
            with open(self.path, "rb") as fh:
                header = fh.readline()
                try:
                    same = json.loads(header).get("fingerprint") == self.key
                except (ValueError, AttributeError):
                    same = False
                if not same:
                    raise ValueError(f"{self.path} is left from a run with other input or arguments; "
                                     "delete it or pass --restart")
                good = len(header)
                for raw in fh:
                    try:
                        entry = json.loads(raw)
                    except ValueError:
                        break  # the last line, cut short
                    if not raw.endswith(b"\n"):
                        break
                    self.done[int(entry["line"])] = entry["result"]
                    good += len(raw)
            self.fh = open(self.path, "r+b")
            self.fh.truncate(good)
            self.fh.seek(good)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "wb")
            self._write({"fingerprint": self.key})
        return self

    def _write(self, entry: dict) -> None:
        self.fh.write((json.dumps(entry, ensure_ascii=False) + "\n").encode())
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def add(self, line: int, result: list | str) -> None:
        self.done[line] = result
        self._write({"line": line, "result": result})

    def close(self) -> None:
        self.fh.close()


@dataclass
class BatchReport:
    read: int
    queries: int
    resumed: int
    rows: int
    errors: list[RecordError]
    out: Path


def run_batch_file(engine, queries: str | Path, out: str | Path, *, target: str = "organisations", k: int = 20,
                   filters: dict | None = None, explain: bool = True, runner: str = "local", actors: int = 1,
                   restart: bool = False, progress: bool = True) -> BatchReport:
    """The ``python -m matcher batch`` command: plan, resume from the checkpoint, match, write the output."""
    from tqdm import tqdm

    from matcher.tables_io import read_table, table_format, write_table

    queries, out = Path(queries), Path(out)
    table_format(out)  # an unknown output type fails before any work
    engine.ensure_ready()
    batch = plan(read_table(queries), engine.store, target=target, k=k, filters=filters, explain=explain)
    key = fingerprint(queries, target=target, k=k, filters=filters, explain=explain, model=engine.encoder.name)
    checkpoint = Checkpoint(out, key).open(restart=restart)
    todo = [i for i in batch.items if i.line not in checkpoint.done]
    resumed = len(batch.items) - len(todo)
    try:
        with tqdm(total=len(batch.items), initial=resumed, desc="matching", unit=" queries", disable=not progress) as bar:
            def on_done(line, result):
                checkpoint.add(line, result)
                bar.update(1)

            if runner == "ray":
                # Ray's actors open their own engines: on this engine's tenant
                run_ray(replace(engine.settings, default_tenant=engine.tenant), todo, on_done, actors=actors)
            else:
                run_local(engine, todo, on_done)
    finally:
        checkpoint.close()
    errors = list(batch.errors)
    rows = []
    for item in batch.items:
        result = checkpoint.done[item.line]
        if isinstance(result, str):
            errors.append(RecordError(item.line, result))
        else:
            rows.extend(result)
    write_table(out, COLUMNS, rows)
    checkpoint.path.unlink()
    errors.sort(key=lambda e: e.line)
    return BatchReport(batch.read, len(batch.items), resumed, len(rows), errors, out)
