"""Load benchmark: locust against gunicorn on loopback, 10,000 real CORDIS organisations, a concurrent writer.

    .venv/bin/python bench/load.py                         # = make bench-load: scenarios mixed and reads, 60 s each
    .venv/bin/python bench/load.py --duration 15           # a quick run
    .venv/bin/python bench/load.py --scenarios mixed --match-users 4 --read-users 2
    .venv/bin/python bench/load.py --prepare-only          # build (or check) the store and stop

1. Store: the first --orgs organisations of the pool that pass validation (as bench/latency.py picks them),
   imported once with `python -m matcher import --tenant bench organisations` into var/bench-load/data and
   reused on later runs (var/bench-load/data/prepared.json says what it holds; --rebuild starts over).
2. An API key of that tenant (read, match, write) with its own limit of 1,000,000 requests a minute, so the
   shared per-key rate limiter runs but should never throttle (--no-rate-limit: MATCHER_RATE_LIMIT=0 and a key
   without a limit of its own, so the limiter is not consulted); the key is revoked at the end.
3. gunicorn as `make run` starts it (service/gunicorn_conf.py, 2 workers, 127.0.0.1, a free port, job runner
   off, MATCHER_LOAD_DEMO=0); ready when /readyz answers 200 and every worker has logged that it is ready.
4. Each scenario runs `locust --headless` (bench/locustfile.py) for --duration seconds against that server:
   match users (POST /v1/match, k=10, text queries from the dev call texts and from pool descriptions of
   organisations not in the store, explain on or off at random), read users (GET /v1/organisations/<id> of a
   random stored organisation; list pages of 50, following next_cursor), and one writer (PATCH, PUT or a bulk of 3
   of a fixed seeded set of stored organisations, one request a second, each changing a description so it is
   re-embedded and every worker's indexes sync). Every request a locust user makes is timed by the locustfile
   (not locust's rounded percentiles); any non-2xx answer or a match without matches is an error.
5. The writer's organisations are put back as imported (one bulk) and gunicorn is stopped, always.

Prints a table per scenario (requests, requests/s, p50, p99, errors per endpoint class) with the machine and
settings, and writes var/bench-load/load.json and load.md. Exits 1 when any request failed.
Traffic goes to 127.0.0.1 only.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from latency import (  # noqa: E402
    DATA,
    free_port,
    git_revision,
    host_facts,
    load_pool,
    load_queries,
    percentile,
    source_fingerprint,
    tail,
    wait_for_gunicorn,
)

BIN = Path(sys.executable).parent
WORK = ROOT / "var" / "bench-load"
LOCUSTFILE = ROOT / "bench" / "locustfile.py"
TENANT = "bench"
KEY_RATE_LIMIT = 1_000_000  # requests a minute: the most a key may have; never reached here
READY_TIMEOUT = 300.0
WRITER_ORGS = 30
QUERY_DESCRIPTIONS = 200  # pool descriptions (of organisations not in the store) used as match queries
CLASSES = ("match explain", "match no-explain", "read by id", "list", "write")
WRITE_OPS = ("write PATCH", "write PUT", "write bulk of 3")  # the writer's requests: together the class "write"
SCENARIOS = {
    # users of each class; the writer is always one
    "mixed": ("MatchUser", "ReadUser", "WriterUser"),
    "reads": ("ReadUser", "WriterUser"),
    "match": ("MatchUser", "WriterUser"),
}


def log(msg: str = "") -> None:
    print(msg, flush=True)


def show(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def server_env(data_dir: Path, **extra: str) -> dict:
    env = {
        **os.environ,
        "MATCHER_DATA_DIR": str(data_dir),
        "MATCHER_LOAD_DEMO": "0",
        "MATCHER_DEFAULT_TENANT": TENANT,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        **extra,
    }
    env.pop("MATCHER_DB_URL", None)
    return env


def matcher_cli(data_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "matcher", *args], cwd=ROOT, env=server_env(data_dir),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"python -m matcher {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# --- 1. the store ---------------------------------------------------------------------------------


def pool_identity(pool: Path) -> dict:
    st = pool.stat()
    return {"pool": str(pool.resolve()), "pool_bytes": st.st_size, "pool_mtime": int(st.st_mtime)}


def prepare(data_dir: Path, pool: Path, n: int, rebuild: bool) -> dict:
    """The data dir holding the first n valid pool organisations in tenant `bench`: reused when prepared.json
    matches, otherwise built from scratch (python -m matcher import). Returns prepared.json's content."""
    marker = data_dir / "prepared.json"
    orgs_file = data_dir / "organisations.jsonl"
    want = {"orgs": n, "tenant": TENANT, **pool_identity(pool)}
    if marker.exists() and orgs_file.exists() and (data_dir / "matcher.db").exists() and not rebuild:
        prepared = json.loads(marker.read_text())
        if all(prepared.get(k) == v for k, v in want.items()):
            log(f"reusing the store in {data_dir} ({prepared['orgs']:,} organisations, imported {prepared['imported_at']} "
                f"in {prepared['import_s']:.0f} s)")
            return {**prepared, "reused": True}
        log(f"{marker} describes another store ({ {k: prepared.get(k) for k in want} }); rebuilding")
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    records, skipped, reasons = load_pool(pool, n)
    if len(records) < n:
        raise SystemExit(f"the pool holds only {len(records)} valid organisations, not {n}")
    with open(orgs_file, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    log(f"importing {n:,} organisations ({skipped} invalid pool rows skipped) into {data_dir}, tenant '{TENANT}' "
        "(embeds every profile: several minutes)")
    t1 = time.perf_counter()
    matcher_cli(data_dir, "-q", "import", "--tenant", TENANT, "organisations", str(orgs_file), timeout=3 * 3600)
    import_s = time.perf_counter() - t1
    prepared = {
        **want,
        "skipped_rows": skipped,
        "skip_reasons": reasons,
        "ids_sha256": hashlib.sha256("\n".join(r["id"] for r in records).encode()).hexdigest()[:16],
        "import_s": import_s,
        "prepare_s": time.perf_counter() - t0,
        "imported_at": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "revision": git_revision(),
        "load_avg": os.getloadavg()[0],
    }
    marker.write_text(json.dumps(prepared, indent=2))
    log(f"imported in {import_s:.0f} s ({n / import_s:.1f} orgs/s, load avg {prepared['load_avg']:.1f})")
    return {**prepared, "reused": False}


def read_orgs(data_dir: Path) -> list[dict]:
    with open(data_dir / "organisations.jsonl", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def query_texts(queries_file: Path, pool: Path, stored_ids: set[str], seed: int) -> tuple[list[str], list[str]]:
    """(call texts of the dev queries, descriptions of pool organisations that are not in the store)."""
    from pydantic import ValidationError

    from models.schemas import MatchQuery

    calls, _ = load_queries(queries_file)
    descriptions = []
    with gzip.open(pool, "rt", encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                text = (row.get("description") or "").strip()
                if row.get("id") not in stored_ids and len(text) >= 200:
                    try:
                        MatchQuery.model_validate({"text": text})
                    except ValidationError:
                        continue
                    descriptions.append(text)
    random.Random(seed).shuffle(descriptions)
    return calls, descriptions[:QUERY_DESCRIPTIONS]


def encode_times(data_dir: Path, calls: list[str], descriptions: list[str]) -> dict:
    """What encoding each match text costs a worker: the product's encoder (MATCHER_ENCODER_RUNTIME, 1 thread, the
    export in the store's data dir) on each text alone, over the windows a match embeds (MATCHER_QUERY_WINDOWS), in
    this process before the server starts. p50 over each kind of text and over all (the match users draw from
    both alike)."""
    import statistics

    from matcher.encoder import Encoder
    from matcher.settings import Settings

    settings = Settings.from_env(data_dir=data_dir)
    encoder = Encoder(settings.model, models_dir=settings.export_dir, threads=1)
    windows = settings.query_windows or None
    encoder.encode(calls[:3], max_windows=windows)  # warm-up
    out = {"runtime": encoder.runtime, "query_windows": settings.query_windows}
    every = []
    for name, texts in (("calls", calls), ("descriptions", descriptions)):
        times = []
        for text in texts:
            started = time.perf_counter()
            encoder.encode([text], max_windows=windows)
            times.append((time.perf_counter() - started) * 1000)
        every += times
        out[f"{name}_p50_ms"] = statistics.median(times)
    out["p50_ms"] = statistics.median(every)
    return out


# --- 2-3. the server --------------------------------------------------------------------------------


def start_gunicorn(data_dir: Path, port: int, workers: int, log_path: Path, rate_limit: bool) -> tuple[subprocess.Popen, float]:
    env = server_env(data_dir, MATCHER_HOST="127.0.0.1", MATCHER_PORT=str(port), MATCHER_WORKERS=str(workers),
                     MATCHER_JOB_RUNNER="0", MATCHER_LOG_LEVEL="info")
    if not rate_limit:  # the key has no limit of its own: none applies, the limiter is not consulted
        env["MATCHER_RATE_LIMIT"] = "0"
    base = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen([str(BIN / "gunicorn"), "-c", "service/gunicorn_conf.py", "service:create_app()"],
                                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    wait_for_gunicorn(proc, base, log_path, workers, started, READY_TIMEOUT, 60)
    return proc, time.perf_counter() - started


def stop_gunicorn(proc: subprocess.Popen) -> None:
    """SIGTERM to gunicorn's process group (graceful), SIGKILL if it lingers. Only the group we started."""
    for sig, wait in ((signal.SIGTERM, 40), (signal.SIGKILL, 10)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass
    try:  # workers left behind by a master that died first
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def warm_up(base: str, key: str, calls: list[str], ids: list[str], workers: int) -> str:
    """A few requests of every read-only class, so each worker has run each code path once (not measured).
    Returns what the server says of the key's rate limit (its X-RateLimit-Limit header)."""
    import requests

    headers = {"Authorization": f"Bearer {key}", "Connection": "close"}
    for i in range(2 * workers):
        for explain in (False, True):
            r = requests.post(f"{base}/v1/match", json={"query": {"text": calls[i % len(calls)]}, "k": 10, "explain": explain},
                              headers=headers, timeout=120)
            r.raise_for_status()
        requests.get(f"{base}/v1/organisations/{ids[i]}", headers=headers, timeout=60).raise_for_status()
        r = requests.get(f"{base}/v1/organisations?limit=50", headers=headers, timeout=60)
        r.raise_for_status()
    limit = r.headers.get("X-RateLimit-Limit")
    return f"{int(limit):,} requests a minute" if limit else "off (no limit applies to the key)"


def restore(base: str, key: str, originals: list[dict]) -> None:
    """Put the writer's organisations back as imported, so the next run starts from the same store."""
    import requests

    r = requests.post(f"{base}/v1/organisations/bulk", json={"items": originals},
                      headers={"Authorization": f"Bearer {key}"}, timeout=600)
    if r.status_code != 200:
        raise RuntimeError(f"restoring the writer's organisations failed: HTTP {r.status_code} {r.text[:300]}")


def readyz(base: str) -> dict:
    import requests

    try:
        r = requests.get(f"{base}/readyz", timeout=30)
        body = r.json()
        return {"status": r.status_code, "ready": body.get("ready"), "store_seq": body.get("store_seq"),
                "index_seq": body.get("index_seq")}
    except Exception as exc:  # noqa: BLE001 - reported
        return {"status": None, "error": repr(exc)}


# --- 4. locust ----------------------------------------------------------------------------------------


def run_locust(name: str, base: str, key: str, run_dir: Path, args) -> dict:
    classes = SCENARIOS[name]
    counts = {"MatchUser": args.match_users, "ReadUser": args.read_users, "WriterUser": 1}
    users = sum(counts[c] for c in classes)
    times_file = run_dir / f"{name}-times.json"
    times_file.unlink(missing_ok=True)
    env = {
        **os.environ,
        "LOAD_BENCH_DIR": str(run_dir),
        "LOAD_BENCH_KEY": key,
        "LOAD_BENCH_TIMES": str(times_file),
        "LOAD_BENCH_MATCH_USERS": str(counts["MatchUser"]),
        "LOAD_BENCH_READ_USERS": str(counts["ReadUser"]),
        "LOAD_BENCH_SEED": str(args.seed),
    }
    cmd = [str(BIN / "locust"), "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users),
           "-t", f"{args.duration}s", "--stop-timeout", "30", "--host", base, "--csv", str(run_dir / name),
           "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0", *classes]
    log(f"[{name}] locust {args.duration} s: {', '.join(f'{counts[c]} {c}' for c in classes)} "
        f"(load avg {os.getloadavg()[0]:.1f})")
    load_before = os.getloadavg()[0]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.duration + 180)
    if proc.returncode != 0 or not times_file.exists():
        raise RuntimeError(f"locust failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    (run_dir / f"{name}-locust.log").write_text(proc.stdout + proc.stderr)
    raw = json.loads(times_file.read_text())
    # Requests that ended within the time limit; the few that users finish after it are left out.
    wall = raw["stopped"] - raw["started"]
    within = [e for e in raw["requests"] if e[3] <= raw["stopped"]]
    rows = {}
    for cls in (*CLASSES, *WRITE_OPS):
        entries = [e for e in within if e[0] == cls or (cls == "write" and e[0] in WRITE_OPS)]
        if not entries:
            continue
        ms = [e[1] for e in entries]
        errors = [e for e in entries if e[2]]
        rows[cls] = {
            "requests": len(entries),
            "req_per_s": len(entries) / wall,
            "p50_ms": percentile(ms, 50),
            "p99_ms": percentile(ms, 99),
            "mean_ms": sum(ms) / len(ms),
            "max_ms": max(ms),
            "errors": len(errors),
            "error_samples": sorted({e[2] for e in errors})[:5],
        }
    total = len(within)
    late = [e for e in raw["requests"] if e[3] > raw["stopped"]]
    return {
        "users": {c: counts[c] for c in classes},
        "duration_s": wall,
        "requests": total,
        "req_per_s": total / wall,
        "errors": sum(r["errors"] for c, r in rows.items() if c in CLASSES) + sum(1 for e in late if e[2]),
        "after_limit": {"requests": len(late), "errors": sum(1 for e in late if e[2])},
        "classes": rows,
        "load_avg_before": load_before,
        "load_avg_after": os.getloadavg()[0],
    }


# --- report ---------------------------------------------------------------------------------------


def machine_facts() -> dict:
    from importlib.metadata import version  # not `import locust`: it monkey-patches this process with gevent

    return {**host_facts(), "locust": version("locust")}


def render(result: dict) -> str:
    s, f = result["settings"], result["machine"]
    lines = [f"# Load benchmark ({result['started_at']})", ""]
    for name, sc in result["scenarios"].items():
        users = ", ".join(f"{n} {c.replace('User', '').lower()}" for c, n in sc["users"].items())
        lines += [
            f"Scenario `{name}`: {users} user(s), {sc['duration_s']:.0f} s, {sc['requests']:,} requests "
            f"({sc['req_per_s']:.1f}/s), {sc['errors']} errors; load avg {sc['load_avg_before']:.1f} -> {sc['load_avg_after']:.1f}; "
            f"/readyz after: {sc.get('readyz_after')}",
            "",
            "| class | requests | req/s | p50 ms | p99 ms | errors |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for cls, r in sc["classes"].items():
            lines.append(f"| {cls} | {r['requests']:,} | {r['req_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} |")
        for cls, r in sc["classes"].items():
            if cls in WRITE_OPS:
                continue
            for sample in r["error_samples"]:
                lines.append(f"- error ({cls}): {sample}")
        lines.append("")
    e = result["encoding"]
    lines.append(f"Encoding a match text alone ({e['runtime']}, 1 thread, first {e['query_windows'] or 'all'} windows, "
                 f"before the server started): p50 {e['p50_ms']:.0f} ms (call texts {e['calls_p50_ms']:.0f}, "
                 f"descriptions {e['descriptions_p50_ms']:.0f}).")
    for name, sc in result["scenarios"].items():
        matches = [r for cls, r in sc["classes"].items() if cls.startswith("match") and r["requests"]]
        if matches:
            p50 = max(r["p50_ms"] for r in matches)
            lines.append(f"`{name}`: match p50 (the slower class) {p50:.0f} ms = {p50 / e['p50_ms']:.1f} x that.")
    lines += [
        "",
        "Machine and settings:",
        "",
        f"- nproc {f['nproc']} (usable {f['usable_cpus']}), CPU {f['cpu']}, memory {f['memory']}; Python {f['python']}; "
        f"locust {f['locust']} on the same machine as the server",
        f"- store: {s['orgs']:,} CORDIS organisations in tenant '{TENANT}' ({s['store']})",
        f"- gunicorn: {s['workers']} workers x {s['threads']} request threads, 127.0.0.1, "
        f"MATCHER_TORCH_THREADS={s['torch_threads']}, job runner off, "
        f"auth on (one key; rate limit {s['rate_limit']}), started in {s['startup_s']:.1f} s",
        f"- users: closed loop without wait (match, read); the writer 1 request/s over {WRITER_ORGS} organisations "
        "(PATCH, PUT, bulk of 3 in turn); match k=10, text queries: "
        f"{s['query_calls']} call texts + {s['query_descriptions']} pool descriptions, explain at random",
        f"- code: {s['revision']}, sources {s['sources']}"
        + ("; WARNING: sources changed during the run" if s["sources_changed"] else ""),
        f"- run {result['run_s']:.0f} s after the store was ready (preparation {result['prepare_s']:.0f} s)",
        "",
    ]
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=10_000, help="organisations in the store (default 10000)")
    parser.add_argument("--duration", type=int, default=60, help="seconds of load per scenario (default 60)")
    parser.add_argument("--scenarios", nargs="+", choices=sorted(SCENARIOS), default=["mixed", "reads"],
                        help="mixed: match + read + writer; reads: read + writer; match: match + writer (default mixed reads)")
    parser.add_argument("--match-users", type=int, default=3, help="concurrent match users (default 3)")
    parser.add_argument("--read-users", type=int, default=3, help="concurrent read users (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (default 2, the product default)")
    parser.add_argument("--work-dir", type=Path, default=WORK, help=f"store and results (default {show(WORK)})")
    parser.add_argument("--rebuild", action="store_true", help="re-import the store even if it is there")
    parser.add_argument("--no-rate-limit", action="store_true",
                        help="MATCHER_RATE_LIMIT=0 and a key without its own limit: the rate limiter is not consulted "
                             f"(default: the key's limit is {KEY_RATE_LIMIT:,} a minute, so the limiter runs but should never throttle)")
    parser.add_argument("--prepare-only", action="store_true", help="build or check the store, then stop")
    parser.add_argument("--pool", type=Path, default=DATA / "pool.jsonl.gz")
    parser.add_argument("--queries-file", type=Path, default=DATA / "dev_queries.jsonl.gz")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    for path in (args.pool, args.queries_file):
        if not path.exists():
            parser.error(f"{path} not found (set MATCHER_BENCH_DATA to the folder holding pool.jsonl.gz)")
    if args.duration < 1 or args.orgs < WRITER_ORGS or args.match_users < 0 or args.read_users < 0:
        parser.error("--duration must be positive, --orgs at least 30, user counts not negative")

    started_at = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    work = args.work_dir.resolve()
    data_dir, run_dir = work / "data", work / "run"
    t0 = time.perf_counter()
    prepared = prepare(data_dir, args.pool, args.orgs, args.rebuild)
    prepare_s = time.perf_counter() - t0
    log(f"store ready after {prepare_s:.0f} s")
    if args.prepare_only:
        return 0

    t_run = time.perf_counter()
    sources, revision = source_fingerprint(), git_revision()
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    orgs = read_orgs(data_dir)
    ids = [o["id"] for o in orgs]
    rng = random.Random(args.seed)
    writer_orgs = rng.sample(orgs, WRITER_ORGS)
    calls, descriptions = query_texts(args.queries_file, args.pool, set(ids), args.seed)
    (run_dir / "queries.json").write_text(json.dumps(calls + descriptions))
    (run_dir / "ids.json").write_text(json.dumps(ids))
    (run_dir / "writer.json").write_text(json.dumps(writer_orgs))
    log(f"{len(calls)} call texts + {len(descriptions)} pool descriptions as match queries; "
        f"{len(ids):,} ids to read; the writer edits {len(writer_orgs)} organisations")
    encoding = encode_times(data_dir, calls, descriptions)
    log(f"encoding the match texts alone: p50 {encoding['p50_ms']:.0f} ms")

    port = free_port()
    log_path = run_dir / "gunicorn.log"
    base = f"http://127.0.0.1:{port}"
    proc = key_id = None
    result = {"started_at": started_at, "prepare_s": prepare_s, "prepared": prepared, "scenarios": {},
              "encoding": encoding}
    failure = None
    try:
        limit = [] if args.no_rate_limit else ["--rate-limit", str(KEY_RATE_LIMIT)]
        created = matcher_cli(data_dir, "keys", "create", "--tenant", TENANT, "--scopes", "read,match,write",
                              "--label", "bench-load", *limit)
        key = created.stdout.strip().splitlines()[0]
        key_id = created.stderr.split()[1] if created.stderr.startswith("key ") else None
        log(f"starting gunicorn ({args.workers} workers) on {base}, log {show(log_path)}")
        proc, startup_s = start_gunicorn(data_dir, port, args.workers, log_path, rate_limit=not args.no_rate_limit)
        log(f"gunicorn ready in {startup_s:.1f} s; warming up")
        limiter = warm_up(base, key, calls, ids, args.workers)
        log(f"rate limiter: {limiter}")
        try:
            for name in args.scenarios:
                sc = run_locust(name, base, key, run_dir, args)
                sc["readyz_after"] = readyz(base)
                result["scenarios"][name] = sc
                log(f"[{name}] {sc['requests']:,} requests in {sc['duration_s']:.0f} s, {sc['errors']} errors")
        finally:
            if proc.poll() is None:
                restore(base, key, writer_orgs)
                log(f"restored the writer's {len(writer_orgs)} organisations")
    except Exception as exc:  # noqa: BLE001 - reported, then exit 1 after gunicorn is stopped
        failure = exc
        log(f"FAILED: {exc}\ngunicorn log tail:\n{tail(log_path)}")
    finally:
        if proc is not None:
            stop_gunicorn(proc)
            log(f"gunicorn stopped (exit {proc.returncode})")
        if key_id:
            try:
                matcher_cli(data_dir, "keys", "revoke", key_id)
            except Exception as exc:  # noqa: BLE001
                log(f"could not revoke the bench key {key_id}: {exc}")
    if failure is not None:
        return 1

    result["run_s"] = time.perf_counter() - t_run
    result["machine"] = machine_facts()
    result["settings"] = {
        "orgs": args.orgs,
        "store": "reused" if prepared["reused"] else f"imported in {prepared['import_s']:.0f} s",
        "workers": args.workers,
        "torch_threads": os.environ.get("MATCHER_TORCH_THREADS", "1"),
        "threads": os.environ.get("MATCHER_THREADS", "8"),
        "rate_limit": limiter,
        "startup_s": startup_s,
        "duration_s": args.duration,
        "match_users": args.match_users,
        "read_users": args.read_users,
        "writer_orgs": WRITER_ORGS,
        "query_calls": len(calls),
        "query_descriptions": len(descriptions),
        "revision": revision,
        "sources": sources,
        "sources_changed": source_fingerprint() != sources,
        "seed": args.seed,
    }
    text = render(result)
    log("\n" + text)
    (work / "load.json").write_text(json.dumps(result, indent=2))
    (work / "load.md").write_text(text)
    log(f"figures written to {show(work / 'load.json')} and load.md")
    errors = sum(sc["errors"] for sc in result["scenarios"].values())
    if errors:
        log(f"FAIL: {errors} request(s) failed")
        return 1
    log("OK: zero errors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
