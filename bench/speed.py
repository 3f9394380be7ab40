"""Issue 26's speed targets, measured beside the bare torch encode of the same texts in the same run.

    .venv/bin/python bench/speed.py                                 # = make bench-speed: every part (~15 min)
    .venv/bin/python bench/speed.py --parts http --duration 5       # one part, short
    .venv/bin/python bench/speed.py --inproc-sizes 10000 --start-sizes 14783 --no-ann

Stores: bench/stores.py's var/bench-stores/<N>/ (tenant bench; built on first use, then reused). Parts:
  encode   the bare torch encode (sentence-transformers, torch 1 thread, in this process) of the texts the other
           parts send: dev call titles (one line) and dev call texts (title + description, over the model's
           windows as the product splits them), beside the product's own encoder on the same texts;
  inproc   at each --inproc-sizes N (default 10,000, 14,783 = the whole pool, 100,000): Engine(settings).open()
           + load_indexes() in this process (which rewrites stale snapshots) and in a fresh process (the cold
           figure, with that process's RSS and PSS); then, with the query vectors computed beforehand, match
           latency after encoding: one-line k=10 without and with explanations, call texts, organisation ids;
           FAISS flat search of the same query vectors over the store's vectors, and HNSW/IVF recall@100 against
           it when the text match p99 misses 100 ms (or --ann);
  start    gunicorn on the --start-sizes stores (default 14,783 and 100,000): each worker's time from its fork
           to its "worker N ready" log line, and RSS/PSS of every worker and of the master;
  http     gunicorn as `make run` starts it (2 workers, loopback, job runner off) on a throwaway copy of the
           --http-size store (default 10,000), an API key of tenant bench; after warm-up, --clients client threads
           (default 4, one keep-alive http.client connection each) for --duration seconds per scenario: GET /healthz
           (the floor of client and server), one-line match (dev titles cycled, and unique texts never sent before:
           past project titles of the pool), the same with explanations, call-text match (unique texts), id match;
           then ingest: --ingest-orgs pool organisations not in the store, 100 per POST /v1/organisations/bulk.
It writes a Markdown table to bench/out/speed.md and every figure to bench/out/speed.json; gunicorn is always
stopped, and its log is kept in bench/out/ when a part fails.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import gzip
import http.client
import itertools
import json
import os
import random
import re
import shutil
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

import numpy as np  # noqa: E402
from latency import (  # noqa: E402
    DATA,
    OUT,
    cycle,
    free_port,
    git_revision,
    host_facts,
    load_pool,
    load_queries,
    log,
    memory_mb,
    percentile,
    source_fingerprint,
    summary,
    tail,
    time_each,
)
from load import KEY_RATE_LIMIT, TENANT, matcher_cli, show, start_gunicorn, stop_gunicorn, warm_up  # noqa: E402
from stores import prepare, settings_for, stored_ids  # noqa: E402

PARTS = ("encode", "inproc", "start", "http")
POOL_SIZE = 14_783
WARMUP = 10
K = 10
TICK = os.sysconf("SC_CLK_TCK")


# --- texts ------------------------------------------------------------------------------------------


def dev_titles(path: Path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return list(dict.fromkeys(json.loads(line)["title"].strip() for line in fh if line.strip()))


def project_titles(pool: Path, exclude: set[str], seed: int) -> list[str]:
    """Distinct past project titles of the pool that read as a one-line need (4-25 words, not a call's name in
    capitals), shuffled: one-line texts no other part sends."""
    seen: dict[str, None] = {}
    with gzip.open(pool, "rt", encoding="utf-8") as fh:
        for line in fh:
            for p in json.loads(line).get("past_projects") or [] if line.strip() else []:
                t = " ".join(str(p.get("title") or "").split())
                if 4 <= len(t.split()) <= 25 and len(t) <= 200 and not t.isupper() and t not in exclude:
                    seen[t] = None
    titles = list(seen)
    random.Random(seed).shuffle(titles)
    return titles


def text_body(text: str | None = None, explain: bool = False, org_id: str | None = None) -> dict:
    query = {"text": text} if org_id is None else {"organisation_id": org_id}
    return {"query": query, "target": "organisations", "k": K, "explain": explain}


# --- process facts ------------------------------------------------------------------------------------


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (those that are gone count 0)."""
    total = 0.0
    for pid in pids:
        try:
            s = _stat(pid)
        except OSError:
            continue
        total += (int(s[11]) + int(s[12])) / TICK
    return total


def since_boot() -> float:
    return time.clock_gettime(time.CLOCK_BOOTTIME)


class StartWatch(threading.Thread):
    """Tails gunicorn's log while it starts: each worker's fork (its start time in /proc, 10 ms ticks) and the
    moment its "worker N ready" line appears (10 ms polls), both in seconds since boot."""

    def __init__(self, log_path: Path):
        super().__init__(daemon=True)
        self.log_path, self.forked, self.ready = log_path, {}, {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        offset, pending = 0, b""
        while not self._stop_event.is_set():
            try:
                with open(self.log_path, "rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
            except OSError:
                chunk = b""
            now = since_boot()
            offset += len(chunk)
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                if m := re.search(r"Booting worker with pid: (\d+)", text):
                    pid = int(m.group(1))
                    try:
                        self.forked[pid] = int(_stat(pid)[19]) / TICK
                    except OSError:
                        pass
                elif m := re.search(r"worker (\d+) ready: ", text):
                    self.ready[int(m.group(1))] = now
            time.sleep(0.01)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)

    def workers(self) -> list[int]:
        return sorted(self.ready)

    def start_s(self) -> dict[int, float]:
        return {pid: self.ready[pid] - self.forked[pid] for pid in self.workers() if pid in self.forked}


@contextlib.contextmanager
def serving(data_dir: Path, workers: int, label: str):
    """gunicorn on data_dir for the block, started as load.py does and its workers' start watched: yields (proc,
    port, startup_s, watch). Stopped after the block whatever happened, and its log removed; when the start or the
    block fails, the log is first kept in bench/out."""
    log_path = data_dir / f"gunicorn-{label}.log"
    port = free_port()
    watch = StartWatch(log_path)
    watch.start()
    log(f"[{label}] starting gunicorn ({workers} workers) on 127.0.0.1:{port}, log {show(log_path)}")
    proc = None
    try:
        try:
            proc, startup_s = start_gunicorn(data_dir, port, workers, log_path, rate_limit=True)
        finally:
            time.sleep(0.05)
            watch.stop()
        yield proc, port, startup_s, watch
    except Exception:
        keep_log(log_path, label)
        raise
    finally:
        if proc is not None:
            stop_gunicorn(proc)
            log(f"[{label}] gunicorn stopped (exit {proc.returncode})")
        log_path.unlink(missing_ok=True)


def worker_facts(proc, watch: StartWatch, startup_s: float) -> dict:
    start = watch.start_s()
    return {
        "startup_s": startup_s,
        "worker_start_s": list(start.values()),
        "workers": [{"pid": pid, "start_s": start.get(pid), **memory_mb(pid)} for pid in watch.workers()],
        "master": memory_mb(proc.pid),
    }


def keep_log(log_path: Path, label: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    kept = OUT / f"speed-gunicorn-{label}.log"
    if log_path.exists():
        shutil.copyfile(log_path, kept)
    log(f"[{label}] gunicorn log kept in {show(kept)}; its last lines:\n{tail(log_path, 30)}")


# --- part: encode ---------------------------------------------------------------------------------------


def windows_of(encoder, text: str) -> list[str]:
    """The texts the product's encoder runs the model on for ``text``: its windows (one when it fits)."""
    return [w.text for w in encoder.windows(text)] if hasattr(encoder, "windows") else [text]


def encode_part(product, titles: list[str], calls: list[str], n_lines: int, n_calls: int) -> dict:
    """Bare torch (sentence-transformers over the product's windows, 1 thread) and the product's encoder."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(getattr(product, "path", None) or _model_path(), device="cpu", local_files_only=True)

    def bare(text: str):
        return model.encode(windows_of(product, text), batch_size=32, normalize_embeddings=True,
                            convert_to_numpy=True, show_progress_bar=False)

    def mine(text: str):
        return product.encode([text])

    lines, long = titles[5 : 5 + n_lines], calls[5 : 5 + n_calls]
    out = {
        "one_line": {"bare_torch": time_each(bare, lines, titles[:5]), "product": time_each(mine, lines, titles[:5])},
        "call_text": {"bare_torch": time_each(bare, long, calls[:2]), "product": time_each(mine, long, calls[:2])},
        "product_encoder": f"{type(product).__module__}.{type(product).__qualname__} on {getattr(product, 'runtime', 'torch')}",
        "call_text_windows": statistics_of([len(windows_of(product, t)) for t in long]),
    }
    for kind, v in out.items():
        if isinstance(v, dict) and "bare_torch" in v:
            log(f"[encode] {kind}: bare torch p50 {v['bare_torch']['p50']:.1f} ms, p99 {v['bare_torch']['p99']:.1f}; "
                f"product encoder p50 {v['product']['p50']:.1f} ms, p99 {v['product']['p99']:.1f} (n={v['product']['n']})")
    return out


def statistics_of(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "max": float(max(values))} if values else {}


def _model_path() -> str:
    from matcher.encoder import default_model_path

    return default_model_path()


# --- part: in process -------------------------------------------------------------------------------------


def snapshot_files(index_dir: Path) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in index_dir.rglob("*") if p.is_file()}


def open_engine(data_dir: Path, encoder=None):
    """Engine(settings).open(); engine.load_indexes() as a worker does: (engine, seconds, snapshots rewritten)."""
    from matcher.engine import Engine

    settings = settings_for(data_dir)
    before = snapshot_files(settings.index_dir)
    t0 = time.perf_counter()
    engine = Engine(settings, encoder=encoder).open()
    engine.load_indexes()
    return engine, time.perf_counter() - t0, snapshot_files(settings.index_dir) != before


def cold_start(data_dir: Path) -> None:
    """In a fresh process (speed.py --cold-start DIR): imports, then open + load_indexes, memory; one JSON line."""
    t0 = time.perf_counter()
    from matcher.engine import Engine  # noqa: F401 - the imports a worker has made before it loads

    import_s = time.perf_counter() - t0
    before = memory_mb()
    engine, load_s, rewritten = open_engine(data_dir)
    print(json.dumps({"import_s": import_s, "load_s": load_s, "rewrote_snapshots": rewritten, "memory_before": before,
                      "memory_after": memory_mb(), "indexed": engine.status()["indexed"]}))


def run_cold(data_dir: Path) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--cold-start", str(data_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise RuntimeError(f"the cold-start process failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - started}


def time_matches(engine, bodies: list[dict], vectors: dict, warm: int) -> dict:
    """Engine.match_many per request with the query's vector given (no encoding): wall time, took_ms, timings."""
    from models.schemas import MatchRequest

    requests = [MatchRequest.model_validate(b) for b in bodies]

    def one(request):
        text = request.query.text
        return engine.match_many([request], text_vectors={text: vectors[text]} if text is not None else None)[0]

    for request in requests[:warm]:
        one(request)
    wall, took, parts, short = [], [], {}, 0
    for request in requests[warm:]:
        t0 = time.perf_counter()
        result = one(request)
        wall.append(time.perf_counter() - t0)
        took.append(result["took_ms"] / 1000)
        short += len(result["matches"]) < K
        for name, ms in (result.get("timings") or {}).items():
            parts.setdefault(name, []).append(ms)
    return {**summary(wall), "took_ms": summary(took), "short_results": short,
            "timings_p50": {name: percentile(ms, 50) for name, ms in parts.items()}}


def store_vectors(data_dir: Path) -> np.ndarray:
    """Every organisation's vector as stored (row order)."""
    from matcher.encoder import from_bytes
    from models.enums import EntityKind
    from models.store import Store

    store = Store(settings_for(data_dir).db_url, tenant=TENANT)
    try:
        return np.vstack([from_bytes(r.vector) for r in store.vectors(EntityKind.organisations) if r.vector is not None])
    finally:
        store.engine.dispose()


def flat_and_ann(matrix: np.ndarray, queries: np.ndarray, ann: bool, depth: int = 100) -> dict:
    """One thread: FAISS flat inner product and numpy's matrix-vector product + argpartition, top ``depth``; with
    ``ann``, HNSW and IVF recall@depth against flat and their search times."""
    import faiss
    from threadpoolctl import threadpool_limits

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        flat = faiss.IndexFlatIP(matrix.shape[1])
        flat.add(matrix)
        def top(q):
            return np.argpartition(-(matrix @ q), depth)[:depth]

        out = {"faiss_flat": time_each(lambda q: flat.search(q[None, :], depth), queries),
               "numpy_matvec": time_each(top, queries)}  # numpy's BLAS with its default threads, as the engine has
        with threadpool_limits(1):
            out["numpy_matvec_1_thread"] = time_each(top, queries)
        if not ann:
            return out
        _, truth = flat.search(queries, depth)

        def recall(index) -> float:
            _, got = index.search(queries, depth)
            return float(np.mean([len(set(a) & set(b)) / depth for a, b in zip(got, truth)]))

        rows = []
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(matrix.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.add(matrix)
        build_s = time.perf_counter() - t0
        for ef in (128, 256, 512):
            hnsw.hnsw.efSearch = ef
            rows.append({"index": f"HNSW32 efSearch={ef}", "build_s": build_s, "recall": recall(hnsw),
                         **time_each(lambda q: hnsw.search(q[None, :], depth), queries)})
        nlist = int(4 * np.sqrt(len(matrix)))
        t0 = time.perf_counter()
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(matrix.shape[1]), matrix.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.train(matrix)
        ivf.add(matrix)
        build_s = time.perf_counter() - t0
        for nprobe in (16, 32, 64):
            ivf.nprobe = nprobe
            rows.append({"index": f"IVF{nlist} nprobe={nprobe}", "build_s": build_s, "recall": recall(ivf),
                         **time_each(lambda q: ivf.search(q[None, :], depth), queries)})
        out["ann"] = rows
        for r in rows:
            log(f"[ann] {r['index']}: recall@{depth} {r['recall']:.4f}, p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, "
                f"built in {r['build_s']:.1f} s")
        return out
    finally:
        faiss.omp_set_num_threads(threads)


def inproc_part(size: int, data_dir: Path, encoder, texts: dict, vectors: dict, args) -> dict:
    label = f"inproc {size:,}"
    engine, load_s, rewritten = open_engine(data_dir, encoder)
    log(f"[{label}] open + load_indexes() in this process: {load_s:.2f} s" + (" (snapshots rewritten)" if rewritten else ""))
    out: dict = {"load_this_process_s": load_s, "rewrote_snapshots": rewritten}
    try:
        out["cold"] = run_cold(data_dir)
        c = out["cold"]
        log(f"[{label}] fresh process: open + load_indexes() {c['load_s']:.2f} s (imports {c['import_s']:.1f} s); "
            f"RSS {c['memory_after']['Rss']:.0f} MB, PSS {c['memory_after']['Pss']:.0f} MB "
            f"(after imports {c['memory_before']['Rss']:.0f} / {c['memory_before']['Pss']:.0f})")
        n = args.inproc_queries
        ids = random.Random(args.seed).sample(stored_ids(data_dir), WARMUP + n)
        calls = texts["calls"][: args.inproc_calls]
        variants = {
            "one_line": [text_body(t) for t in cycle(texts["titles"], WARMUP + n)],
            "one_line_explain": [text_body(t, True) for t in cycle(texts["titles"], WARMUP + n)],
            "call_text": [text_body(t) for t in calls * 2],  # the first pass (not timed) caches their title lines
            "org_id": [text_body(org_id=i) for i in ids],
        }
        for key, bodies in variants.items():
            warm = len(calls) if key == "call_text" else WARMUP
            out[key] = r = time_matches(engine, bodies, vectors, warm)
            short = f", {r['short_results']} with fewer than {K} matches" if r["short_results"] else ""
            log(f"[{label}] {key:<17} p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms  (took_ms p50 {r['took_ms']['p50']:.1f}; "
                f"n={r['n']}{short})")
    finally:
        engine.store.engine.dispose()
        del engine
        gc.collect()
    queries = np.vstack([vectors[t] for t in texts["titles"]])
    ann = args.ann or out["one_line"]["p99"] > 100
    out["search"] = flat_and_ann(store_vectors(data_dir), queries, ann and not args.no_ann)
    log(f"[{label}] FAISS flat top-100, 1 thread: p50 {out['search']['faiss_flat']['p50']:.2f} ms, "
        f"p99 {out['search']['faiss_flat']['p99']:.2f} ms; numpy mat-vec p50 {out['search']['numpy_matvec']['p50']:.2f} ms "
        f"(BLAS 1 thread {out['search']['numpy_matvec_1_thread']['p50']:.2f} ms)")
    out["load_avg"] = os.getloadavg()[0]
    return out


# --- part: gunicorn worker start ---------------------------------------------------------------------------


def start_part(size: int, data_dir: Path, workers: int) -> dict:
    label = f"start-{size}"
    with serving(data_dir, workers, label) as (proc, _, startup_s, watch):
        out = worker_facts(proc, watch, startup_s)
    log(f"[{label}] all ready {startup_s:.1f} s after launch; worker fork -> ready: "
        + ", ".join(f"{s:.2f} s" for s in out["worker_start_s"])
        + "; per worker RSS/PSS MB: " + ", ".join(f"{w['Rss']:.0f}/{w['Pss']:.0f}" for w in out["workers"])
        + f"; master {out['master']['Rss']:.0f}/{out['master']['Pss']:.0f}")
    return out


# --- part: HTTP ---------------------------------------------------------------------------------------------


def hammer(port: int, key: str, calls: list[tuple[str, str, bytes]], clients: int, duration: float, repeat: bool,
           server_pids: list[int]) -> dict:
    """Closed loop: ``clients`` threads, one keep-alive http.client connection each, send the requests in turn
    (cycled when ``repeat``, else each once) for ``duration`` seconds. Timed from sending to the body read;
    answers are checked after the run."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    counter = itertools.count()
    done: list[list] = [[] for _ in range(clients)]
    cpu = [0.0] * clients
    failures: list[str] = []
    barrier = threading.Barrier(clients + 1)
    deadline = time.perf_counter() + duration + 1e9  # set for real when every client is ready

    def send(conn, method, path, body):
        conn.request(method, path, body, headers)
        response = conn.getresponse()
        return response.status, response.read()

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        barrier.wait()
        c0 = time.thread_time()
        try:
            while time.perf_counter() < deadline:
                n = next(counter)
                if n >= len(calls) and not repeat:
                    break
                method, path, body = calls[n % len(calls)]
                t0 = time.perf_counter()
                try:
                    status, data = send(conn, method, path, body)
                except (http.client.HTTPException, ConnectionError):  # the server closed an idle connection
                    conn.close()
                    status, data = send(conn, method, path, body)
                done[i].append((time.perf_counter() - t0, status, data))
        except Exception as exc:  # noqa: BLE001 - reported
            failures.append(repr(exc))
        finally:
            cpu[i] = time.thread_time() - c0
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    server0 = cpu_s(server_pids)
    deadline = time.perf_counter() + duration
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    server = cpu_s(server_pids) - server0
    flat = [x for d in done for x in d]
    if not flat:
        raise RuntimeError(f"no request completed: {failures[:1]}")
    bad, took, parts = [], [], {}
    for _, status, data in flat:
        body = json.loads(data) if data[:1] == b"{" else {}
        if status != 200 or ("matches" in body and not body["matches"]):
            bad.append(f"HTTP {status}: {data[:200]!r}")
        if "took_ms" in body:
            took.append(body["took_ms"] / 1000)
        for name, ms in (body.get("timings") or {}).items():
            parts.setdefault(name, []).append(ms)
    return {
        **summary([x[0] for x in flat]),
        "requests": len(flat),
        "req_per_s": len(flat) / wall,
        "wall_s": wall,
        "errors": len(bad) + len(failures),
        "error_samples": (failures + bad)[:3],
        "took_ms": summary(took) if took else None,
        "timings_p50": {name: percentile(ms, 50) for name, ms in parts.items()},
        "client_cpu_ms_per_request": 1000 * sum(cpu) / len(flat),
        "server_cpu_ms_per_request": 1000 * server / len(flat),
        "cpu_share": {"client": sum(cpu) / wall / (os.cpu_count() or 1), "server": server / wall / (os.cpu_count() or 1)},
    }


def ingest(port: int, key: str, docs: list[dict], batch: int, server_pids: list[int]) -> dict:
    """POST /v1/organisations/bulk, ``batch`` organisations a request, one after the other (one client)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    times = []
    server0 = cpu_s(server_pids)
    try:
        for start in range(0, len(docs), batch):
            items = docs[start : start + batch]
            body = json.dumps({"items": items}).encode()
            t0 = time.perf_counter()
            conn.request("POST", "/v1/organisations/bulk", body, headers)
            response = conn.getresponse()
            data = response.read()
            times.append(time.perf_counter() - t0)
            if response.status != 200 or json.loads(data).get("count") != len(items):
                raise RuntimeError(f"bulk of {len(items)}: HTTP {response.status} {data[:300]!r}")
    finally:
        conn.close()
    return {"orgs": len(docs), "batch": batch, "orgs_per_s": len(docs) / sum(times), "batch_s_p50": percentile(times, 50),
            "batch_s_max": max(times), "server_cpu_s": cpu_s(server_pids) - server0, "wall_s": sum(times)}


def http_part(size: int, source_dir: Path, texts: dict, args) -> dict:
    label = f"http-{size}"
    work = Path(tempfile.mkdtemp(prefix="bench-speed-http-"))
    data_dir = work / "data"
    try:
        shutil.copytree(source_dir, data_dir)  # ingest writes: a throwaway copy
        created = matcher_cli(data_dir, "keys", "create", "--tenant", TENANT, "--scopes", "read,match,write",
                              "--label", "bench-speed", "--rate-limit", str(KEY_RATE_LIMIT))
        key = created.stdout.strip().splitlines()[0]
        with serving(data_dir, args.workers, label) as (proc, port, startup_s, watch):
            out = {"start": worker_facts(proc, watch, startup_s), "clients": args.clients, "duration_s": args.duration}
            pids = [proc.pid, *watch.workers()]
            base = f"http://127.0.0.1:{port}"
            ids = stored_ids(data_dir)
            out["rate_limit"] = warm_up(base, key, texts["calls"], ids, args.workers)

            def post(bodies: list[dict]) -> list[tuple[str, str, bytes]]:
                return [("POST", "/v1/match", json.dumps(b).encode()) for b in bodies]

            titles = texts["titles"]
            hammer(port, key, post([text_body(t) for t in titles]), args.clients, 600, False, pids)  # every title once
            calls = texts["calls"][2 * args.workers :]  # warm_up sent the first ones
            rng = random.Random(args.seed)
            unique, alone = texts["unique"][:-1000], texts["unique"][-1000:]  # never sent before, in either scenario
            many = args.clients
            scenarios = [
                ("healthz", [("GET", "/healthz", None)], True, min(args.duration, 5), many),
                ("one_line_single", post([text_body(t) for t in alone]), False, min(args.duration, 10), 1),
                ("one_line_cycled", post([text_body(t) for t in titles]), True, args.duration, many),
                ("one_line_unique", post([text_body(t) for t in unique]), False, args.duration, many),
                ("one_line_explain_cycled", post([text_body(t, True) for t in titles]), True, args.duration, many),
                ("call_text_unique", post([text_body(t) for t in calls]), False, args.duration, many),
                ("org_id", post([text_body(org_id=i) for i in rng.sample(ids, min(len(ids), 5000))]), True, args.duration, many),
            ]
            for name, requests, repeat, seconds, clients in scenarios:
                r = out[name] = hammer(port, key, requests, clients, seconds, repeat, pids)
                r["clients"] = clients
                took = f", server took_ms p50 {r['took_ms']['p50']:.1f}" if r["took_ms"] else ""
                log(f"[{label}] {name:<24} {r['requests']:>6} req  {r['req_per_s']:7.1f} req/s  p50 {r['p50']:6.1f} ms  "
                    f"p99 {r['p99']:6.1f} ms{took}; CPU ms/request client {r['client_cpu_ms_per_request']:.2f}, server "
                    f"{r['server_cpu_ms_per_request']:.1f}; errors {r['errors']}" + (f" e.g. {r['error_samples'][0]}" if r["errors"] else ""))
            if args.ingest_orgs:
                stored = set(ids)
                pool, _, _ = load_pool(args.pool, size + args.ingest_orgs + 100)
                docs = [d for d in pool if d["id"] not in stored][: args.ingest_orgs]
                out["ingest"] = r = ingest(port, key, docs, 100, pids)
                log(f"[{label}] ingest {r['orgs']} organisations, {r['batch']} a request: {r['orgs_per_s']:.1f} orgs/s "
                    f"(a request p50 {r['batch_s_p50']:.1f} s, max {r['batch_s_max']:.1f} s)")
            out["load_avg"] = os.getloadavg()[0]
            return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- report ---------------------------------------------------------------------------------------------------


def render(result: dict) -> str:
    enc, inproc, start, http = (result.get(p) or {} for p in ("encode", "inproc", "start", "http"))
    f = result["facts"]

    def get(d: dict, *path, fmt="{:.1f}"):
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return "-"
            d = d[p]
        return fmt.format(d) if isinstance(d, (int, float)) and d == d else "-"  # NaN: not measured

    def pair(d: dict, *path) -> str:
        return f"{get(d, *path, 'p50')} / {get(d, *path, 'p99')}"

    def met(value, target: float, lower: bool = True) -> str:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return ""
        if v != v:  # not measured
            return ""
        return "yes" if (v <= target if lower else v >= target) else "**no**"

    bare1, bare_call = pair(enc, "one_line", "bare_torch"), pair(enc, "call_text", "bare_torch")
    h = http
    s10 = inproc.get("10000") or {}
    s100 = inproc.get("100000") or {}
    st15, st100 = start.get("14783") or {}, start.get("100000") or {}
    worst = lambda st: max(st.get("worker_start_s") or [float("nan")])  # noqa: E731
    rows = [
        ("HTTP one-line match, 10k, 1 client, unique texts: p50 / p99 ms", pair(h, "one_line_single"), "<= 12 / <= 40",
         met(get(h, "one_line_single", "p50"), 12) + " / " + met(get(h, "one_line_single", "p99"), 40), bare1),
        ("HTTP one-line match, 10k, dev titles cycled: p50 / p99 ms", pair(h, "one_line_cycled"), "<= 12 / <= 40",
         met(get(h, "one_line_cycled", "p50"), 12) + " / " + met(get(h, "one_line_cycled", "p99"), 40), bare1),
        ("HTTP one-line match, cycled: requests/s", get(h, "one_line_cycled", "req_per_s"), ">= 120",
         met(get(h, "one_line_cycled", "req_per_s"), 120, False), ""),
        ("HTTP one-line match, unique texts: p50 / p99 ms", pair(h, "one_line_unique"), "<= 12 / <= 40",
         met(get(h, "one_line_unique", "p50"), 12) + " / " + met(get(h, "one_line_unique", "p99"), 40), bare1),
        ("HTTP one-line match, unique texts: requests/s", get(h, "one_line_unique", "req_per_s"), ">= 120",
         met(get(h, "one_line_unique", "req_per_s"), 120, False), ""),
        ("HTTP one-line match with explanations, cycled: p50 / p99 ms, req/s",
         f"{pair(h, 'one_line_explain_cycled')}, {get(h, 'one_line_explain_cycled', 'req_per_s')}", "-", "", bare1),
        ("HTTP call-text match, unique texts: requests/s (p50 ms)",
         f"{get(h, 'call_text_unique', 'req_per_s')} ({get(h, 'call_text_unique', 'p50', fmt='{:.0f}')})", ">= 12 (3 x 4.0)",
         met(get(h, "call_text_unique", "req_per_s"), 12, False), bare_call),
        ("HTTP id match: requests/s (p50 / p99 ms)", f"{get(h, 'org_id', 'req_per_s')} ({pair(h, 'org_id')})", ">= 500",
         met(get(h, "org_id", "req_per_s"), 500, False), "none"),
        ("HTTP ingest, bulk of 100: organisations/s", get(h, "ingest", "orgs_per_s"), ">= 46 (2 x 23)",
         met(get(h, "ingest", "orgs_per_s"), 46, False), ""),
        ("in process, 10k: one-line match after encoding p50 ms", get(s10, "one_line", "p50"), "<= 5",
         met(get(s10, "one_line", "p50"), 5), ""),
        ("in process, 10k: with explanations p50 ms", get(s10, "one_line_explain", "p50"), "<= 10",
         met(get(s10, "one_line_explain", "p50"), 10), ""),
        ("in process, 100k: one-line match after encoding p99 ms", get(s100, "one_line", "p99"), "<= 100",
         met(get(s100, "one_line", "p99"), 100), ""),
        ("in process, 100k: id match p99 ms", get(s100, "org_id", "p99"), "<= 30", met(get(s100, "org_id", "p99"), 30), ""),
        ("gunicorn worker start (fork -> ready), 14,783: slowest worker s", get({"v": worst(st15)}, "v", fmt="{:.2f}"), "<= 1",
         met(worst(st15), 1), ""),
        ("gunicorn worker start, 100k: slowest worker s", get({"v": worst(st100)}, "v", fmt="{:.2f}"), "<= 10",
         met(worst(st100), 10), ""),
    ]
    lines = [
        f"# Speed benchmark, issue 26 ({result['started_at']})",
        "",
        "Latency in ms (p50 / p99), wall time per request as the client sees it (HTTP) or around `Engine.match_many` "
        "(in process). The last column is the bare torch encode of the same texts in this run (sentence-transformers, "
        "torch 1 thread, in process, p50 / p99 ms).",
        "",
        "| figure | measured | target | met | bare torch encode |",
        "|---|---:|---|---|---:|",
        *[f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows],
    ]
    if enc:
        lines += ["", "## Encoding one text (this process, torch 1 thread)", "",
                  "| texts | bare torch p50 / p99 | product encoder p50 / p99 | n |", "|---|---:|---:|---:|"]
        for key, label in (("one_line", "dev call title (one line)"),
                           ("call_text", f"dev call text (title + description, {get(enc, 'call_text_windows', 'mean')} windows on average)")):
            lines.append(f"| {label} | {pair(enc, key, 'bare_torch')} | {pair(enc, key, 'product')} | {get(enc, key, 'product', 'n', fmt='{}')} |")
        lines.append(f"\nProduct encoder: `{enc.get('product_encoder')}` (MATCHER_ENCODER_RUNTIME), 1 thread as a worker has. "
                     "Bare torch: sentence-transformers on torch over the same windows the product encodes, one batch.")
    if http:
        lines += ["", f"## HTTP at {result['settings']['http_size']:,} organisations", "",
                  f"gunicorn as `make run` starts it ({result['settings']['workers']} workers, "
                  f"{show(Path('service/gunicorn_conf.py'))}, job runner off), on a throwaway copy of the store; "
                  f"{h['clients']} client threads (1 in `one_line_single`) in this process, one keep-alive `http.client` connection each, closed "
                  f"loop, {h['duration_s']:.0f} s per scenario; an API key of tenant {TENANT}, rate limit {h.get('rate_limit')}. "
                  "Client and server CPU are per request (server: master + workers, from /proc).",
                  "", "| scenario | clients | requests | req/s | p50 | p99 | server took_ms p50 | client CPU ms/req | server CPU ms/req | errors |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name in ("healthz", "one_line_single", "one_line_cycled", "one_line_unique", "one_line_explain_cycled",
                     "call_text_unique", "org_id"):
            r = h.get(name)
            if r:
                lines.append(f"| {name} | {r.get('clients', h['clients'])} | {r['requests']:,} | {r['req_per_s']:.1f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                             f"{get(r, 'took_ms', 'p50')} | {r['client_cpu_ms_per_request']:.2f} | "
                             f"{r['server_cpu_ms_per_request']:.1f} | {r['errors']} |")
        parts = (h.get("one_line_explain_cycled") or {}).get("timings_p50")
        if parts:
            lines.append("\nWith explanations, server timings p50 ms: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + ".")
        if h.get("ingest"):
            i = h["ingest"]
            lines.append(f"\nIngest: {i['orgs']} pool organisations not in the store, {i['batch']} a request, one client: "
                         f"{i['orgs_per_s']:.1f} organisations/s; a request p50 {i['batch_s_p50']:.1f} s, max {i['batch_s_max']:.1f} s.")
    if inproc:
        sizes = list(inproc)
        lines += ["", "## In process (one engine, query vectors computed beforehand)", "",
                  "| figure | " + " | ".join(f"N = {int(s):,}" for s in sizes) + " |", "|---|" + "---:|" * len(sizes)]

        def row(label, fn):
            cells = []
            for s in sizes:
                try:
                    cells.append(fn(inproc[s]))
                except (KeyError, TypeError, ValueError):
                    cells.append("-")
            lines.append(f"| {label} | " + " | ".join(cells) + " |")

        row("open + load_indexes(), this process (warm page cache), s",
            lambda r: f"{r['load_this_process_s']:.2f}" + (" (rewrote snapshots)" if r["rewrote_snapshots"] else ""))
        row("open + load_indexes(), fresh process, s (imports before it)", lambda r: f"{r['cold']['load_s']:.2f} ({r['cold']['import_s']:.1f})")
        row("fresh process after loading: RSS / PSS MB", lambda r: f"{r['cold']['memory_after']['Rss']:.0f} / {r['cold']['memory_after']['Pss']:.0f}")
        row("of which after imports: RSS / PSS MB", lambda r: f"{r['cold']['memory_before']['Rss']:.0f} / {r['cold']['memory_before']['Pss']:.0f}")
        for key, label in (("one_line", "one-line k=10"), ("one_line_explain", "one-line k=10, explanations"),
                           ("call_text", "call text k=10 (title line cached)"), ("org_id", "organisation id k=10")):
            row(f"{label}: p50 / p99 ms", lambda r, k=key: f"{r[k]['p50']:.1f} / {r[k]['p99']:.1f}")
        row("one-line, explanations: timings p50 ms (retrieve / rank / explain)",
            lambda r: " / ".join(f"{r['one_line_explain']['timings_p50'][p]:.1f}" for p in ("retrieve", "rank", "explain")))
        for key, label in (("faiss_flat", "FAISS flat top-100, 1 thread"),
                           ("numpy_matvec", f"numpy matrix-vector + argpartition top-100, BLAS threads {f['blas_threads']}"),
                           ("numpy_matvec_1_thread", "the same, BLAS 1 thread")):
            row(f"{label}: p50 / p99 ms", lambda r, k=key: f"{r['search'][k]['p50']:.2f} / {r['search'][k]['p99']:.2f}")
        for s in sizes:
            for a in inproc[s].get("search", {}).get("ann") or []:
                lines.append(f"\nN = {int(s):,}, {a['index']}: recall@100 against flat {a['recall']:.4f}, p50 {a['p50']:.2f} ms, "
                             f"p99 {a['p99']:.2f} ms, built in {a['build_s']:.1f} s")
        if not any(inproc[s].get("search", {}).get("ann") for s in sizes):
            lines.append("\nHNSW / IVF not measured: flat search met the p99 target (--ann measures them anyway).")
    if start:
        lines += ["", "## gunicorn worker start", "",
                  "| N | launch to all ready, s | each worker fork -> ready, s | each worker RSS / PSS MB | master RSS / PSS MB |",
                  "|---:|---:|---|---|---|"]
        for s, r in start.items():
            each = ", ".join(f"{x:.2f}" for x in r["worker_start_s"])
            memory = ", ".join(f"{w['Rss']:.0f} / {w['Pss']:.0f}" for w in r["workers"])
            lines.append(f"| {int(s):,} | {r['startup_s']:.1f} | {each} | {memory} | {r['master']['Rss']:.0f} / {r['master']['Pss']:.0f} |")
    for part, error in result.get("errors", {}).items():
        lines.append(f"\n**Part {part} failed**: {error.splitlines()[0] if error else '?'}")
    lines += [
        "",
        "Machine and run:",
        "",
        f"- nproc {f['nproc']} (usable {f['usable_cpus']}), CPU {f['cpu']}, memory {f['memory']}; Python {f['python']}",
        f"- load average (1 min) at start {result['load_avg_start']:.2f}, at end {result['load_avg_end']:.2f}; "
        "other processes on the machine skew every figure",
        f"- code: {f['revision']}, sources {f['sources']}"
        + ("; WARNING: matcher/, models/ or service/ changed during the run, the figures may mix versions"
           if f["sources_changed"] else "; unchanged during the run"),
        "- stores: " + ", ".join(f"{int(n):,} ({p})" for n, p in result["stores"].items()),
        f"- total run time {result['run_s'] / 60:.1f} min",
        "",
    ]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="default: all")
    parser.add_argument("--http-size", type=int, default=10_000, help="organisations for the HTTP part (default 10000)")
    parser.add_argument("--inproc-sizes", type=int, nargs="+", default=[10_000, POOL_SIZE, 100_000])
    parser.add_argument("--start-sizes", type=int, nargs="+", default=[POOL_SIZE, 100_000])
    parser.add_argument("--duration", type=float, default=15, help="seconds per HTTP scenario (default 15)")
    parser.add_argument("--clients", type=int, default=4, help="HTTP client threads (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2, the product default)")
    parser.add_argument("--ingest-orgs", type=int, default=500, help="organisations ingested over HTTP (default 500; 0: none)")
    parser.add_argument("--inproc-queries", type=int, default=200, help="timed in-process requests per variant (default 200)")
    parser.add_argument("--inproc-calls", type=int, default=40, help="call texts timed in process (default 40)")
    parser.add_argument("--encode-lines", type=int, default=100, help="one-line texts encoded alone (default 100)")
    parser.add_argument("--encode-calls", type=int, default=20, help="call texts encoded alone (default 20)")
    ann = parser.add_mutually_exclusive_group()
    ann.add_argument("--ann", action="store_true", help="measure HNSW/IVF even where flat search meets the target")
    ann.add_argument("--no-ann", action="store_true", help="never measure HNSW/IVF")
    parser.add_argument("--pool", type=Path, default=DATA / "pool.jsonl.gz")
    parser.add_argument("--queries-file", type=Path, default=DATA / "dev_queries.jsonl.gz")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=OUT / "speed.md")
    parser.add_argument("--cold-start", type=Path, help=argparse.SUPPRESS)  # the fresh process of the inproc part
    args = parser.parse_args(argv)
    if args.cold_start:
        cold_start(args.cold_start)
        return 0
    for path in (args.pool, args.queries_file):
        if not path.exists():
            parser.error(f"{path} not found (set MATCHER_BENCH_DATA to the folder holding pool.jsonl.gz)")

    run_started, started_at = time.perf_counter(), dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sources, revision = source_fingerprint(), git_revision()
    result: dict = {"started_at": started_at, "load_avg_start": os.getloadavg()[0], "errors": {},
                    "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "cold_start"}}
    log(f"measuring {revision} (sources {sources}); parts {', '.join(args.parts)}; load avg {result['load_avg_start']:.2f}")

    sizes = sorted({*(args.inproc_sizes if "inproc" in args.parts else []), *(args.start_sizes if "start" in args.parts else []),
                    *([args.http_size] if "http" in args.parts else [])})
    stores = {n: prepare(n) for n in sizes}
    result["stores"] = {n: "reused" if p["reused"] else f"built in {p['seconds']['total']:.0f} s" for n, p in stores.items()}

    import torch  # noqa: F401 (the bare torch encode below; limit_threads then keeps it to one thread too)

    from matcher.cpu import limit_threads

    limit_threads(1)  # as a gunicorn worker (MATCHER_TORCH_THREADS=1): torch, BLAS and FAISS on one thread
    titles = dev_titles(args.queries_file)
    calls, _ = load_queries(args.queries_file)
    texts = {"titles": titles, "calls": calls, "unique": project_titles(args.pool, set(titles), args.seed)}
    log(f"texts: {len(titles)} dev titles, {len(calls)} call texts, {len(texts['unique'])} unique one-line texts")

    encoder = vectors = None
    if {"encode", "inproc"} & set(args.parts):
        from matcher.engine import Engine

        # The product's encoder, loaded as an engine loads it; shared by every engine of this process.
        encoder = Engine(settings_for(stores[sizes[0]]["data_dir"])).encoder
        encoder.encode(["warm-up"])

    def attempt(part: str, fn):
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - the other parts still run and report
            import traceback

            traceback.print_exc()
            result["errors"][part] = f"{type(exc).__name__}: {exc}"
            return None

    if "encode" in args.parts:
        result["encode"] = attempt("encode", lambda: encode_part(encoder, titles, calls, args.encode_lines, args.encode_calls))
    primed = set()
    if "inproc" in args.parts:
        wanted = list(dict.fromkeys(titles + calls[: args.inproc_calls]))
        vectors = dict(zip(wanted, encoder.encode(wanted)))
        result["inproc"] = {}
        for n in args.inproc_sizes:
            r = attempt(f"inproc {n}", lambda n=n: inproc_part(n, stores[n]["data_dir"], encoder, texts, vectors, args))
            if r is not None:
                result["inproc"][str(n)] = r
                primed.add(n)
    for n in sorted(set(sizes) - primed):  # a worker would otherwise pay for snapshots of another code version
        engine, load_s, rewritten = open_engine(stores[n]["data_dir"], encoder)
        engine.store.engine.dispose()
        log(f"[prime {n:,}] open + load_indexes(): {load_s:.2f} s" + (" (snapshots rewritten)" if rewritten else ""))
        del engine
        gc.collect()
    if "start" in args.parts:
        result["start"] = {}
        for n in args.start_sizes:
            r = attempt(f"start {n}", lambda n=n: start_part(n, stores[n]["data_dir"], args.workers))
            if r is not None:
                result["start"][str(n)] = r
    if "http" in args.parts:
        result["http"] = attempt("http", lambda: http_part(args.http_size, stores[args.http_size]["data_dir"], texts, args))

    result["load_avg_end"] = os.getloadavg()[0]
    result["run_s"] = time.perf_counter() - run_started
    from threadpoolctl import threadpool_info

    result["facts"] = {**host_facts(), "revision": revision, "sources": sources, "sources_changed": source_fingerprint() != sources,
                       "torch": torch.__version__,
                       "blas_threads": ", ".join(f"{i['internal_api']} {i['num_threads']}" for i in threadpool_info()) or "?"}
    result["stores"] = {str(n): v for n, v in result["stores"].items()}
    text = render(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    log("\n" + text)
    log(f"written to {show(args.out)} and {args.out.with_suffix('.json').name}")
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
