"""Indexing throughput and match latency on real CORDIS organisations, engine-level and over HTTP.

    .venv/bin/python bench/latency.py                      # 1,000 and 10,000 organisations, HTTP at 1,000
    .venv/bin/python bench/latency.py --sizes 1000 --queries 50
    .venv/bin/python bench/latency.py --http               # HTTP at every size
    .venv/bin/python bench/latency.py --http-sizes 10000   # HTTP at these sizes only
    .venv/bin/python bench/latency.py --no-http

For each pool size N (the first N organisations of the pool, in file order, that pass validation):
  1. indexing: validate + embed + store + index N organisations with ``Engine.write`` in chunks of 1,000
     into a fresh data dir; then a second Engine on the same database loads its indexes from the
     snapshot, and a third from the store (snapshot files deleted first);
  2. engine match latency over the dev query texts (title + "\\n" + description), after 10 warm-up
     requests: k=10 without and with explanations, k=10 with a type filter, and organisation-id queries;
  3. HTTP (gunicorn, 2 workers, as ``make run`` starts it): POST /v1/match with 2 client threads.
A Markdown table of every figure is printed at the end and written to bench/out/latency.md.

Data: ../shared/data/cordis/bench/{pool,dev_queries}.jsonl.gz (see SOURCE.md there); override with
--pool / --queries-file or MATCHER_BENCH_DATA (the folder). Nothing is copied into the repository.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import gzip
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(os.environ.get("MATCHER_BENCH_DATA", ROOT.parent / "shared" / "data" / "cordis" / "bench"))
OUT = ROOT / "bench" / "out"
# The Organisation schema's fields that the pool carries; the rest (n_past_projects) is dropped.
ORG_FIELDS = ("id", "name", "type", "country", "city", "description", "past_projects")
CHUNK = 1000
WARMUP = 10
ENGINE_THREADS = 2
READY_TIMEOUT = 120.0


def log(msg: str = "") -> None:
    print(msg, flush=True)


# --- data ---------------------------------------------------------------------------------------


def load_pool(path: Path, n: int) -> tuple[list[dict], int, list[str]]:
    """The first n organisations of the pool (file order) that pass validation, as raw dicts.

    Returns (records, how many rows were skipped before the n-th valid one, a few skip reasons).
    """
    from models.enums import EntityKind
    from models.schemas import InvalidInput, validate_entity

    records, skipped, reasons = [], 0, []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if len(records) >= n:
                break
            if not line.strip():
                continue
            row = json.loads(line)
            item = {k: row[k] for k in ORG_FIELDS if row.get(k) is not None}
            try:
                validate_entity(EntityKind.organisations, item)
            except InvalidInput as exc:
                skipped += 1
                if len(reasons) < 5:
                    first = exc.details[0] if exc.details else {"field": "?", "problem": str(exc)}
                    reasons.append(f"line {line_no} (id {row.get('id')}): {first['field']}: {first['problem']}")
                continue
            records.append(item)
    return records, skipped, reasons


def load_queries(path: Path) -> tuple[list[str], list[str]]:
    """The dev query texts (title + "\\n" + description) that a match request accepts, and the ids of those it
    rejects (over the query text limit), which are left out."""
    from pydantic import ValidationError

    from models.schemas import MatchQuery

    texts, rejected = [], []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                q = json.loads(line)
                text = f"{q['title']}\n{q['description']}"
                try:
                    MatchQuery.model_validate({"text": text})
                except ValidationError as exc:
                    rejected.append(f"{q.get('id')} ({len(text):,} chars: {exc.errors()[0]['msg']})")
                    continue
                texts.append(text)
    return texts, rejected


def cycle(items: list, count: int) -> list:
    return [items[i % len(items)] for i in range(count)]


# --- statistics ---------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (as numpy's default) of a non-empty list."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(seconds: list[float]) -> dict:
    ms = [s * 1000.0 for s in seconds]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "mean": statistics.fmean(ms),
        "max": max(ms),
    }


def memory_mb(pid: int | str = "self") -> dict:
    """RSS, PSS and PSS split (anonymous, file, shared memory) of a process, in MiB (/proc/<pid>/smaps_rollup)."""
    fields = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        name, value = line.split(":", 1)
        fields[name] = int(value.split()[0]) / 1024
    return {k: round(fields.get(k, 0.0), 1) for k in ("Rss", "Pss", "Pss_Anon", "Pss_File", "Pss_Shmem")}


def time_each(fn, items, warm=()) -> dict:
    """summary() of the wall time of fn(item) for each of ``items``, after calling fn on each of ``warm`` untimed."""
    for item in warm:
        fn(item)
    times = []
    for item in items:
        t0 = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - t0)
    return summary(times)


def fmt_lat(s: dict | None) -> str:
    if not s:
        return "-"
    return f"p50 {s['p50']:.1f} / p95 {s['p95']:.1f} / p99 {s['p99']:.1f} / mean {s['mean']:.1f} ms (n={s['n']})"


# --- 1. indexing --------------------------------------------------------------------------------


def bench_indexing(size: int, records: list[dict], data_dir: Path, encoder) -> tuple[dict, object]:
    from matcher.engine import Engine
    from matcher.settings import Settings
    from matcher.text import entity_text
    from models.enums import EntityKind
    from models.schemas import validate_entities

    kind = EntityKind.organisations
    settings = Settings.from_env(data_dir=data_dir, load_demo=False)
    engine = Engine(settings, encoder=encoder).open()
    embedded = [0]
    last_progress = [0.0]

    def progress(count: int) -> None:
        embedded[0] += count
        last_progress[0] = time.perf_counter()

    # How much text there is to embed (untimed): word pieces, and model windows of up to encoder.window.
    texts = [entity_text(kind, d) for d in validate_entities(kind, records)]
    counts = encoder.token_count(texts)
    tokens = sum(counts)
    windows = sum(len(encoder.windows(t, c)) if c > encoder.window else 1 for t, c in zip(texts, counts))
    del texts
    log(f"[{size}] indexing {len(records)} organisations ({tokens:,} word pieces, {windows:,} model windows) "
        f"in chunks of {CHUNK} into {data_dir}")
    validate_s = embed_s = store_s = 0.0
    cpu0 = time.process_time()
    started = time.perf_counter()
    for start in range(0, len(records), CHUNK):
        chunk_started = time.perf_counter()
        docs = validate_entities(kind, records[start : start + CHUNK])
        validated = time.perf_counter()
        engine.write(kind, docs, progress=progress)
        now = time.perf_counter()
        # progress() runs after each embedded batch; what follows the last one is store + index sync.
        validate_s += validated - chunk_started
        embed_s += last_progress[0] - validated
        store_s += now - last_progress[0]
        done = start + len(docs)
        log(
            f"[{size}]   {done:>6}/{len(records)} stored+indexed  chunk {now - chunk_started:6.1f} s "
            f"(embed {last_progress[0] - validated:5.1f}, store+index {now - last_progress[0]:4.2f})  "
            f"total {now - started:6.1f} s  {done / (now - started):6.1f} orgs/s  load avg {os.getloadavg()[0]:.1f}"
        )
    index_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu0
    status = engine.status()
    assert status["indexed"]["organisations"] == len(records), status
    assert embedded[0] == len(records), (embedded[0], len(records))
    log(f"[{size}] indexed {len(records)} in {index_s:.1f} s = {len(records) / index_s:.1f} orgs/s; ready={status['ready']}")

    # A cold worker start: a new Engine (the model already loaded, as gunicorn's master preloads it).
    second = Engine(settings, encoder=encoder).open()
    t0 = time.perf_counter()
    second.load_indexes()
    snapshot_s = time.perf_counter() - t0
    assert len(second.indexes[kind]) == len(records)
    snap_files = sorted(settings.index_dir.glob("*.snapshot.npz"))
    snap_bytes = sum(p.stat().st_size for p in snap_files)
    log(f"[{size}] load_indexes() from the snapshot: {snapshot_s:.3f} s ({snap_bytes / 1e6:.1f} MB in {len(snap_files)} files)")
    second.store.engine.dispose()
    del second

    for path in snap_files:
        path.unlink()
    third = Engine(settings, encoder=encoder).open()
    t0 = time.perf_counter()
    third.load_indexes()  # builds from the store, then rewrites the snapshots (included)
    store_s = time.perf_counter() - t0
    assert len(third.indexes[kind]) == len(records)
    log(f"[{size}] load_indexes() from the store (snapshots deleted; includes rewriting them): {store_s:.3f} s")
    third.store.engine.dispose()
    del third

    db = data_dir / "matcher.db"
    result = {
        "orgs": len(records),
        "index_s": index_s,
        "orgs_per_s": len(records) / index_s,
        "validate_s": validate_s,
        "embed_s": embed_s,
        "store_index_s": store_s,
        "cpu_s": cpu_s,
        "load_avg": os.getloadavg()[0],
        "tokens": tokens,
        "windows": windows,
        "snapshot_load_s": snapshot_s,
        "store_load_s": store_s,
        "snapshot_mb": snap_bytes / 1e6,
        "db_mb": sum(p.stat().st_size for p in data_dir.glob("matcher.db*")) / 1e6 if db.exists() else None,
    }
    return result, engine


# --- 2. engine match latency --------------------------------------------------------------------


def _time_requests(engine, bodies: list[dict]) -> dict:
    """Wall time of engine.match per request (validation of the body not included), after warm-up."""
    from models.schemas import MatchRequest

    for body in bodies[:WARMUP]:
        engine.match(MatchRequest.model_validate(body))
    times, short = [], 0
    for body in bodies[WARMUP:]:
        request = MatchRequest.model_validate(body)
        t0 = time.perf_counter()
        result = engine.match(request)
        times.append(time.perf_counter() - t0)
        short += len(result["matches"]) < request.k
    return {**summary(times), "short_results": short}


def text_body(text: str, explain: bool, types: list[str] | None = None) -> dict:
    return {
        "query": {"text": text},
        "target": "organisations",
        "k": 10,
        "filters": {"types": types or [], "countries": []},
        "explain": explain,
    }


def bench_engine(size: int, engine, queries: list[str], ids: list[str], count: int, encode_count: int, seed: int) -> dict:
    texts = cycle(queries, WARMUP) + cycle(queries, count)
    out = {}

    # Query encoding alone (the part of a text query that is neither search nor store), on fewer queries.
    out["encode_only"] = time_each(lambda t: engine.encoder.encode([t]), texts[WARMUP : WARMUP + encode_count], texts[:WARMUP])
    log(f"[{size}] query encode only        {fmt_lat(out['encode_only'])}")

    variants = [
        ("text_k10", "text k=10 explain=false", lambda t: text_body(t, False)),
        ("text_k10_explain", "text k=10 explain=true", lambda t: text_body(t, True)),
        ("text_k10_sme", "text k=10 types=[sme]", lambda t: text_body(t, False, ["sme"])),
    ]
    for key, label, make in variants:
        out[key] = _time_requests(engine, [make(t) for t in texts])
        note = f"  ({out[key]['short_results']} with fewer than 10 matches)" if out[key]["short_results"] else ""
        log(f"[{size}] {label:<24} {fmt_lat(out[key])}{note}")

    rng = random.Random(seed)
    org_ids = [rng.choice(ids) for _ in range(WARMUP + count)]
    bodies = [{"query": {"organisation_id": i}, "target": "organisations", "k": 10, "explain": False} for i in org_ids]
    out["org_id_k10"] = _time_requests(engine, bodies)
    log(f"[{size}] {'org id k=10 explain=false':<24} {fmt_lat(out['org_id_k10'])}")
    out["load_avg"] = os.getloadavg()[0]
    return out


# --- 3. HTTP --------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def wait_for_gunicorn(proc, base: str, log_path: Path, workers: int, started: float, timeout: float, grace_s: float,
                      label: str = "") -> float:
    """Wait until /readyz answers 200 and every worker has logged that it loaded its indexes
    (service/gunicorn_conf.py's "worker N ready: ..." line; without it, ``grace_s`` after the first 200).
    Returns when /readyz first answered 200 (perf_counter)."""
    import requests

    ready_at = None
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{tail(log_path)}")
        if time.perf_counter() - started > timeout:
            raise RuntimeError(f"gunicorn not ready after {timeout:.0f} s:\n{tail(log_path)}")
        if ready_at is None:
            try:
                if requests.get(f"{base}/readyz", timeout=10).status_code == 200:
                    ready_at = time.perf_counter()
            except requests.RequestException:
                pass
        if ready_at is not None:
            if log_path.read_text(errors="replace").count(" ready: ") >= workers:
                return ready_at
            if time.perf_counter() - ready_at > grace_s:
                log(f"{label}/readyz is 200 but not every worker logged 'ready' after {grace_s:.0f} s; going on")
                return ready_at
        time.sleep(0.25)


def _stop(proc: subprocess.Popen) -> None:
    """Terminate gunicorn (graceful), then kill its process group if it lingers."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the master's group: its workers too (we started it)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _http_run(url: str, bodies: list[dict], clients: int) -> tuple[dict, float]:
    """POST every body once, spread over `clients` threads each with its own Session; (latency, req/s)."""
    import requests

    shares = [bodies[i::clients] for i in range(clients)]
    times: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        with requests.Session() as session:
            try:
                barrier.wait()
                for body in shares[i]:
                    t0 = time.perf_counter()
                    r = session.post(url, json=body, timeout=60)
                    times[i].append(time.perf_counter() - t0)
                    if r.status_code != 200 or not r.json().get("matches"):
                        errors.append(f"HTTP {r.status_code}: {r.text[:200]}")
                        return
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"HTTP client failed: {errors[0]}")
    flat = [x for ts in times for x in ts]
    return summary(flat), len(flat) / wall


def bench_http(size: int, data_dir: Path, queries: list[str], count: int, clients: int, workers: int) -> dict:
    port = free_port()
    env = {
        **os.environ,
        "MATCHER_DATA_DIR": str(data_dir),
        "MATCHER_HOST": "127.0.0.1",
        "MATCHER_PORT": str(port),
        "MATCHER_WORKERS": str(workers),
        "MATCHER_LOAD_DEMO": "0",
        "MATCHER_LOG_LEVEL": "info",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    env.pop("MATCHER_DB_URL", None)
    gunicorn = Path(sys.executable).with_name("gunicorn")
    log_path = data_dir / "gunicorn.log"
    base = f"http://127.0.0.1:{port}"
    log(f"[{size}] starting gunicorn ({workers} workers) on {base}, log {log_path}")
    with open(log_path, "wb") as log_fh:
        started = time.perf_counter()
        proc = subprocess.Popen(
            [str(gunicorn), "-c", "service/gunicorn_conf.py", "service:create_app()"],
            cwd=ROOT,
            env=env,
            stdout=log_fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        ready_at = wait_for_gunicorn(proc, base, log_path, workers, started, READY_TIMEOUT, 30, f"[{size}] ")
        startup_s = time.perf_counter() - started
        log(f"[{size}] gunicorn ready in {startup_s:.1f} s (first /readyz 200 after {ready_at - started:.1f} s)")

        url = f"{base}/v1/match"
        out = {"startup_s": startup_s, "workers": workers, "clients": clients}
        for key, explain in (("http_k10", False), ("http_k10_explain", True)):
            bodies = [text_body(t, explain) for t in cycle(queries, WARMUP * clients)]
            _http_run(url, bodies, clients)  # warm-up: every worker sees a few requests
            bodies = [text_body(t, explain) for t in cycle(queries, count)]
            latency, rps = _http_run(url, bodies, clients)
            out[key] = {**latency, "req_per_s": rps}
            log(f"[{size}] HTTP /v1/match explain={str(explain).lower():<5} {fmt_lat(latency)}  {rps:.1f} req/s")
        return out
    except Exception:
        _stop(proc)
        # Keep the server's side of the failure (its traceback) beyond the temporary data dir.
        OUT.mkdir(parents=True, exist_ok=True)
        kept = OUT / f"gunicorn-{size}.log"
        shutil.copyfile(log_path, kept)
        log(f"[{size}] gunicorn log kept in {kept}; its last lines:\n{tail(log_path, 40)}")
        raise
    finally:
        _stop(proc)
        log(f"[{size}] gunicorn stopped (exit {proc.returncode})")


# --- what code is measured ----------------------------------------------------------------------------


def source_fingerprint() -> str:
    """A hash of the engine's and service's source files: the code a run measures (and gunicorn imports)."""
    import hashlib

    digest = hashlib.sha256()
    for folder in ("matcher", "models", "service"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def git_revision() -> str:
    """The checked-out commit, with "+changes" when the measured sources differ from it (read-only git calls)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "matcher", "models", "service"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + (" +uncommitted changes" if dirty.stdout.strip() else "")


# --- report ---------------------------------------------------------------------------------------


def host_facts() -> dict:
    """The machine a benchmark ran on: cores, CPU model, memory, Python."""
    cpu = mem = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
        mem = next(f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB" for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal"))
    except (OSError, StopIteration):
        pass
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": cpu,
        "memory": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def machine_facts(model_load_s: float, encoder) -> dict:
    import faiss
    import torch

    return {
        **host_facts(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "faiss": faiss.__version__,
        "model": encoder.name,
        "model_load_s": model_load_s,
        "bulk_threads": os.environ.get("MATCHER_BULK_TORCH_THREADS", "0 (default)"),
    }


def render(results: list[dict], facts: dict, args, started_at: str, total_s: float) -> str:
    sizes = [r["size"] for r in results]

    def row(label: str, fn) -> str:
        cells = []
        for r in results:
            try:
                value = fn(r)
            except (KeyError, TypeError):
                value = None
            cells.append("-" if value is None else value)
        return f"| {label} | " + " | ".join(cells) + " |"

    def lat(key: str, field: str, src: str = "engine"):
        return lambda r: f"{r[src][key][field]:.1f}"

    lines = [
        f"# Matcher latency benchmark ({started_at})",
        "",
        f"Organisations: the first N valid rows of `pool.jsonl.gz`; queries: {args.queries} requests per variant cycling "
        f"through the {results[0]['n_queries'] if results else '?'} dev query texts (title + description; "
        f"{len(results[0]['queries_left_out']) if results else '?'} over the query text limit left out), after {WARMUP} warm-up requests. "
        "Latency is wall time per request in ms.",
        "",
        "| metric | " + " | ".join(f"N = {s:,}" for s in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
        row("organisations indexed (rows skipped as invalid)", lambda r: f"{r['index']['orgs']:,} ({r['skipped']})"),
        row("indexing: validate+embed+store+index, s", lambda r: f"{r['index']['index_s']:.1f}"),
        row("indexing throughput, orgs/s", lambda r: f"{r['index']['orgs_per_s']:.1f}"),
        row("text embedded: word pieces (model windows)", lambda r: f"{r['index']['tokens']:,} ({r['index']['windows']:,})"),
        row("embedding throughput, word pieces/s", lambda r: f"{r['index']['tokens'] / r['index']['embed_s']:,.0f}"),
        row("indexing time split: validate / embed / store+index, s",
            lambda r: f"{r['index']['validate_s']:.1f} / {r['index']['embed_s']:.1f} / {r['index']['store_index_s']:.1f}"),
        row("cold load_indexes() from snapshot, s", lambda r: f"{r['index']['snapshot_load_s']:.3f}"),
        row("load_indexes() from store (+ snapshot rewrite), s", lambda r: f"{r['index']['store_load_s']:.3f}"),
        row("snapshot size / SQLite size, MB", lambda r: f"{r['index']['snapshot_mb']:.1f} / {r['index']['db_mb']:.1f}"),
        row("query text encode only (no search) p50 / p99, ms",
            lambda r: f"{r['engine']['encode_only']['p50']:.1f} / {r['engine']['encode_only']['p99']:.1f}"),
    ]
    for key, label in (
        ("text_k10", "engine text k=10 explain=false"),
        ("text_k10_explain", "engine text k=10 explain=true"),
        ("text_k10_sme", "engine text k=10 types=[sme] explain=false"),
        ("org_id_k10", "engine organisation-id k=10 explain=false"),
    ):
        lines.append(row(f"{label}: p50 / p99, ms", lambda r, k=key: f"{r['engine'][k]['p50']:.1f} / {r['engine'][k]['p99']:.1f}"))
        lines.append(row(f"{label}: p95 / mean, ms", lambda r, k=key: f"{r['engine'][k]['p95']:.1f} / {r['engine'][k]['mean']:.1f}"))
        if key == "text_k10_sme":
            lines.append(row(f"{label}: requests with < 10 matches", lambda r: str(r["engine"]["text_k10_sme"]["short_results"])))
    for key, label in (("http_k10", "HTTP POST /v1/match k=10 explain=false"), ("http_k10_explain", "HTTP POST /v1/match k=10 explain=true")):
        lines.append(row(f"{label}: p50 / p99, ms", lambda r, k=key: f"{r['http'][k]['p50']:.1f} / {r['http'][k]['p99']:.1f}"))
        lines.append(row(f"{label}: req/s", lambda r, k=key: f"{r['http'][k]['req_per_s']:.1f}"))
    lines.append(row("HTTP gunicorn start to all workers ready, s", lambda r: f"{r['http']['startup_s']:.1f}"))
    lines.append(row("1-min load average after indexing / after engine latency",
                     lambda r: f"{r['index']['load_avg']:.1f} / {r['engine']['load_avg']:.1f}"))
    lines.append(row("indexing CPU time of this process / wall, s", lambda r: f"{r['index']['cpu_s']:.0f} / {r['index']['index_s']:.0f}"))
    http = next((r["http"] for r in results if r.get("http")), None)
    for r in results:
        if r.get("http_error"):
            lines.append(f"\nHTTP benchmark at N = {r['size']:,} failed: {r['http_error'].splitlines()[0]}")
    lines += [
        "",
        "Machine and settings:",
        "",
        f"- nproc {facts['nproc']} (usable {facts['usable_cpus']}), CPU {facts['cpu']}, memory {facts['memory']}",
        f"- Python {facts['python']} on {facts['platform']}; torch {facts['torch']}, faiss {facts['faiss']}",
        f"- engine-level runs: torch.set_num_threads({ENGINE_THREADS}) (torch reports {facts['torch_threads']} threads; "
        f"Engine.write embeds large writes with MATCHER_BULK_TORCH_THREADS = {facts['bulk_threads']}, 0 = every core); "
        f"model {facts['model']}, loaded once in {facts['model_load_s']:.1f} s (not counted in indexing)",
        (
            f"- HTTP: gunicorn, {http['workers']} sync workers, torch threads per worker = MATCHER_TORCH_THREADS "
            f"({os.environ.get('MATCHER_TORCH_THREADS', '1')}), {http['clients']} client threads on the same machine, "
            "one requests.Session each"
            if http
            else "- HTTP: not run"
        ),
        f"- code: {facts['revision']}, sources {facts['sources']}"
        + (f"; WARNING: the sources changed during the run ({', '.join(facts['sources_changed'])}), the figures may mix versions"
           if facts["sources_changed"] else "; unchanged during the run"),
        f"- total run time {total_s / 60:.1f} min",
        "",
    ]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000], help="pool sizes (default 1000 10000)")
    parser.add_argument("--queries", type=int, default=200, help="measured requests per variant (default 200)")
    parser.add_argument("--encode-queries", type=int, default=50, help="measured query encodings alone (default 50)")
    http = parser.add_mutually_exclusive_group()
    http.add_argument("--http", action="store_true", help="run the HTTP benchmark at every size")
    http.add_argument("--http-sizes", type=int, nargs="+", help="run the HTTP benchmark at these sizes (default: the smallest)")
    http.add_argument("--no-http", action="store_true", help="skip the HTTP benchmark")
    parser.add_argument("--http-clients", type=int, default=2, help="concurrent HTTP client threads (default 2)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2)")
    parser.add_argument("--pool", type=Path, default=DATA / "pool.jsonl.gz")
    parser.add_argument("--queries-file", type=Path, default=DATA / "dev_queries.jsonl.gz")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    parser.add_argument("--out", type=Path, default=OUT / "latency.md")
    args = parser.parse_args(argv)

    for path in (args.pool, args.queries_file):
        if not path.exists():
            parser.error(f"{path} not found (set MATCHER_BENCH_DATA to the folder holding pool.jsonl.gz)")
    if args.queries < 1 or any(s < 1 for s in args.sizes):
        parser.error("--queries and --sizes must be positive")
    if args.no_http:
        http_sizes: set[int] = set()
    elif args.http:
        http_sizes = set(args.sizes)
    elif args.http_sizes:
        http_sizes = set(args.http_sizes)
    else:
        http_sizes = {min(args.sizes)}

    run_started = time.perf_counter()
    started_at = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    source_at_start, revision = source_fingerprint(), git_revision()
    changed_during_run: list[str] = []
    log(f"measuring {revision} (sources {source_at_start})")

    import torch

    torch.set_num_threads(ENGINE_THREADS)
    from matcher.encoder import Encoder

    log(f"torch.set_num_threads({ENGINE_THREADS}) for the engine-level part; nproc {os.cpu_count()}; python {platform.python_version()}")
    t0 = time.perf_counter()
    encoder = Encoder()
    encoder.encode(["warm-up"])
    model_load_s = time.perf_counter() - t0
    log(f"model {encoder.name} loaded in {model_load_s:.1f} s")
    queries, rejected = load_queries(args.queries_file)
    log(f"{len(queries)} dev queries from {args.queries_file}; {len(rejected)} left out as invalid match requests")
    for item in rejected:
        log(f"  left out query {item}")
    facts = machine_facts(model_load_s, encoder)

    results = []
    for size in args.sizes:
        size_started = time.perf_counter()
        records, skipped, reasons = load_pool(args.pool, size)
        log(f"\n=== N = {size:,}: {len(records)} organisations from {args.pool.name}, {skipped} invalid row(s) skipped ===")
        for reason in reasons:
            log(f"  skipped {reason}")
        if len(records) < size:
            log(f"  (the pool holds only {len(records)} valid organisations)")
        data_dir = Path(tempfile.mkdtemp(prefix=f"matcher-bench-{size}-"))
        engine = None
        try:
            index, engine = bench_indexing(size, records, data_dir, encoder)
            result = {"size": size, "skipped": skipped, "n_queries": len(queries), "queries_left_out": rejected, "index": index}
            ids = [r["id"] for r in records]
            result["engine"] = bench_engine(size, engine, queries, ids, args.queries, args.encode_queries, args.seed)
            engine.store.engine.dispose()
            engine = None
            if size in http_sizes:
                if source_fingerprint() != source_at_start:
                    log(f"[{size}] WARNING: matcher/, models/ or service/ changed since the run started: "
                        "gunicorn will import other code than the engine-level part measured")
                    changed_during_run.append(f"before HTTP at N = {size:,}")
                try:
                    result["http"] = bench_http(size, data_dir, queries, args.queries, args.http_clients, args.workers)
                except Exception as exc:  # noqa: BLE001 - the other figures still get reported
                    result["http_error"] = str(exc)
                    log(f"[{size}] HTTP benchmark FAILED: {exc}")
            results.append(result)
        finally:
            if engine is not None:
                engine.store.engine.dispose()
            del engine
            if args.keep:
                log(f"[{size}] kept {data_dir}")
            else:
                shutil.rmtree(data_dir, ignore_errors=True)
            records = None
            gc.collect()
        log(f"[{size}] done in {time.perf_counter() - size_started:.1f} s")

    total_s = time.perf_counter() - run_started
    if source_fingerprint() != source_at_start:
        changed_during_run.append("by the end")
    facts["revision"] = revision
    facts["sources"] = source_at_start
    facts["sources_changed"] = changed_during_run
    table = render(results, facts, args, started_at, total_s)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table)
    args.out.with_suffix(".json").write_text(json.dumps({"facts": facts, "results": results}, indent=2))
    log("\n" + table)
    log(f"written to {args.out} (and {args.out.with_suffix('.json').name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
