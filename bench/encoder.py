"""The encoder's runtimes side by side: torch (sentence-transformers), ONNX Runtime fp32 (the default) and ONNX
Runtime int8 (dynamic quantisation, measured only), on real CORDIS texts.

    .venv/bin/python bench/encoder.py                 # every dev query, 128 profiles
    .venv/bin/python bench/encoder.py --queries 40    # a quick run

1. One-line queries (the dev queries' titles), each encoded alone on 1 thread, the runtimes in turn per text:
   p50/p99 ms. Call texts (title + description, several windows), likewise, for each long-text option:
   (a) every window (today), (b) the first window only (it holds the title), (c) the first 2 windows, (d) every
   window on the int8 model. Ingest: a batch of pool profiles through ``encode_with_sentences`` (what a write
   does) on every core (MATCHER_BULK_TORCH_THREADS=0): texts/s.
2. Cosine of each variant's vectors to torch's: min and mean over the titles, call texts and profiles.
3. Dev quality of each variant's query vectors against the evaluation store (14,783 organisations embedded with
   torch fp32), copied first to --store (the original under var/eval is never written): nDCG@10, R@50 and MRR
   of the product's ranking (``Engine.match_many`` with the query vectors given) and of plain dense search.
4. Memory: PSS and RSS of one process per runtime after a few encodes, and of a gunicorn-like set (a master
   that loads the encoder without running it, then 2 forked workers that encode).

The machine's load average is noted before and after (other work on a shared machine slows every figure).
Writes the Markdown table to bench/out/encoder.md and the raw figures to bench/out/encoder.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from latency import DATA, OUT, memory_mb, percentile

ROOT = Path(__file__).resolve().parents[1]
EVAL_STORE = ROOT / "var" / "eval" / "pool"
OPTIONS = {"a": ("onnx", None), "b": ("onnx", 1), "c": ("onnx", 2), "d": ("int8", None)}
OPTION_LABELS = {"a": "(a) every window", "b": "(b) first window (title + start)", "c": "(c) first 2 windows",
                 "d": "(d) every window, int8"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# --- the encoders ---------------------------------------------------------------------------------

def encoders(work: Path) -> dict:
    """torch, ONNX fp32 (exported into ``work``, as the service does into its data dir) and the int8 variant."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from matcher.encoder import Encoder, OnnxModel

    torch.set_num_threads(1)  # as a gunicorn worker (MATCHER_TORCH_THREADS=1)
    started = time.perf_counter()
    out = {"torch": Encoder(runtime="torch", models_dir=work, threads=1)}
    log(f"torch encoder loaded in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    out["onnx"] = Encoder(runtime="onnx", models_dir=work, threads=1)
    log(f"ONNX encoder ready in {time.perf_counter() - started:.1f} s (exported on the first run)")
    if out["onnx"].runtime != "onnx":
        raise SystemExit("the ONNX export failed its check: see the log")
    fp32 = Path(out["onnx"].backend.file)
    int8 = work / "model.int8.onnx"
    if not int8.exists():
        # Per channel: per-tensor QInt8 gave a min cosine of 0.91 to fp32 here, QUInt8 0.96, per channel 0.99.
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True)
    record = json.loads((fp32.parent / "model.json").read_text())
    backend = OnnxModel(int8, record, Path(out["onnx"].path) / "tokenizer.json", threads=1)
    out["int8"] = Encoder.with_backend(out["onnx"].path, backend)
    return out


def timed(encoder, texts: list[str], max_windows: int | None = None) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    vector = encoder.encode(texts, max_windows=max_windows)
    return vector, (time.perf_counter() - started) * 1000


def per_text(enc: dict, texts: list[str], variants: dict[str, tuple[str, int | None]]) -> tuple[dict, dict]:
    """Each text encoded alone by each variant in turn (after a warm-up): vectors and ms per variant."""
    for runtime, windows in variants.values():
        timed(enc[runtime], texts[:3], windows)
    vectors = {name: [] for name in variants}
    ms = {name: [] for name in variants}
    for text in texts:
        for name, (runtime, windows) in variants.items():
            vector, took = timed(enc[runtime], [text], windows)
            vectors[name].append(vector[0])
            ms[name].append(took)
    return {k: np.vstack(v) for k, v in vectors.items()}, ms


def ingest(enc: dict, texts: list[str]) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Profiles per second through encode_with_sentences (as a write embeds them), on every core; the vectors."""
    rates, vectors = {}, {}
    for name in ("torch", "onnx", "int8"):
        encoder = enc[name]
        with encoder.threads(0):
            encoder.encode_with_sentences(texts[:8])
            started = time.perf_counter()
            vectors[name] = encoder.encode_with_sentences(texts)[0]
        rates[name] = len(texts) / (time.perf_counter() - started)
    return rates, vectors


def cosines(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    values = np.sum(reference * other, axis=1)
    return float(values.min()), float(values.mean())


# --- dev quality ------------------------------------------------------------------------------------

def store_copy(target: Path) -> Path:
    """The evaluation store, copied (SQLite through its backup API, the rest as files); reused when present."""
    if (target / "pool.sha256").exists():
        return target
    if not (EVAL_STORE / "matcher.db").exists():
        raise SystemExit(f"no evaluation store at {EVAL_STORE}: run `python -m matcher evaluate` first")
    log(f"copying the evaluation store to {target}")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(EVAL_STORE, tmp, ignore=shutil.ignore_patterns("matcher.db*", "models"))
    with sqlite3.connect(f"file:{EVAL_STORE / 'matcher.db'}?mode=ro", uri=True) as source, \
            sqlite3.connect(tmp / "matcher.db") as copy:
        source.backup(copy)
    tmp.rename(target)
    return target


def dev_quality(store: Path, torch_encoder, queries: list[dict], variants: dict[str, np.ndarray]) -> dict:
    """nDCG@10, R@50 and MRR of the product and of dense search, per variant of the query vectors."""
    from matcher.engine import Engine
    from matcher.evaluation import CUTOFF, metrics, query_text
    from matcher.index import Filter
    from matcher.settings import Settings
    from models.enums import EntityKind
    from models.schemas import MatchRequest

    settings = Settings.from_env(data_dir=store, load_demo=False, auth=False)
    engine = Engine(settings, encoder=torch_encoder).open()
    engine.load_indexes()
    index = engine.indexes[EntityKind.organisations]
    stored = set(index.num_of)
    out = {}
    for name, vectors in variants.items():
        rows = {"product": [], "dense": []}
        for query, vector in zip(queries, vectors):
            relevant = set(query["relevant"]) & stored
            if not relevant:
                continue
            text = query_text(query)
            request = MatchRequest.model_validate({"query": {"text": text}, "k": CUTOFF, "explain": False})
            result = engine.match_many([request], text_vectors={text: vector})[0]
            rows["product"].append(metrics([m["id"] for m in result["matches"]], relevant))
            dense = index.search(vector[None, :], CUTOFF, Filter())[0]
            rows["dense"].append(metrics([index.meta[n]["id"] for n, _ in dense], relevant))
        out[name] = {ranker: {k: float(np.mean([r[k] for r in got])) for k in ("nDCG@10", "R@50", "MRR")}
                     for ranker, got in rows.items()} | {"queries": len(rows["product"])}
        log(f"dev quality {name}: {out[name]}")
    return out


# --- memory -------------------------------------------------------------------------------------------

def probe(runtime: str, data_dir: str, texts: list[str]) -> dict:
    """(In a child process.) Memory of one process that loads the encoder and encodes, then of a gunicorn-like
    master (loaded, never run) and two forked workers that encode."""
    from matcher.encoder import Encoder

    def work(encoder):
        if encoder.runtime == "torch":
            import torch

            torch.set_num_threads(1)
        encoder.encode(texts[:10])
        encoder.encode(texts[10:12])

    encoder = Encoder(runtime=runtime, models_dir=data_dir, threads=1)
    readings, pipes = [], []
    for _ in range(2):
        done_r, done_w = os.pipe()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                work(encoder)
                os.write(done_w, b"1")
                os.read(go_r, 1)  # measured while the other worker is alive too: shared pages are split
                os.write(done_w, json.dumps(memory_mb()).encode())
            finally:
                os._exit(0)
        pipes.append((pid, done_r, go_w))
    for _, done_r, _ in pipes:
        os.read(done_r, 1)
    master = memory_mb()
    for _, _, go_w in pipes:
        os.write(go_w, b"1")
    for pid, done_r, _ in pipes:
        readings.append(json.loads(os.read(done_r, 4096)))
        os.waitpid(pid, 0)
    return {"master": master, "workers": readings}


def single(runtime: str, data_dir: str, texts: list[str]) -> dict:
    from matcher.encoder import Encoder

    encoder = Encoder(runtime=runtime, models_dir=data_dir, threads=1)
    encoder.encode(texts[:10])
    encoder.encode(texts[10:12])
    return memory_mb() | {"torch_imported": "torch" in sys.modules}


def memory_figures(work: Path, texts: list[str]) -> dict:
    figures = {}
    for runtime in ("torch", "onnx"):
        for mode in ("single", "gunicorn"):
            args = [sys.executable, __file__, "--probe", mode, runtime, str(work)]
            done = subprocess.run(args, input=json.dumps(texts), capture_output=True, text=True, check=True)
            figures[f"{runtime} {mode}"] = json.loads(done.stdout.strip().splitlines()[-1])
            log(f"memory {runtime} {mode}: {figures[f'{runtime} {mode}']}")
    return figures


# --- report ----------------------------------------------------------------------------------------------

def report(f: dict) -> str:
    rt = ("torch", "onnx", "int8")
    lines = [
        "# Encoder runtimes: torch vs ONNX Runtime fp32 vs int8",
        "",
        f"{f['when']}, {f['cpus']} CPUs (shared), load average {f['load_before']} before, {f['load_after']} after; "
        f"onnxruntime {f['versions']['onnxruntime']}, torch {f['versions']['torch']}; model {f['model']}. "
        f"{f['n_titles']} one-line queries, {f['n_calls']} call texts (mean {f['call_windows']:.1f} windows, "
        f"{f['call_pieces']:.0f} word pieces), {f['n_profiles']} profiles.",
        "",
        "| | torch | ONNX fp32 | ONNX int8 |",
        "|---|---|---|---|",
        "| one-line query, 1 thread, p50 / p99 ms | " + " | ".join(
            f"{percentile(f['title_ms'][r], 50):.1f} / {percentile(f['title_ms'][r], 99):.1f}" for r in rt) + " |",
        "| call text (every window), 1 thread, p50 / p99 ms | " + " | ".join(
            f"{percentile(f['call_ms'][k], 50):.0f} / {percentile(f['call_ms'][k], 99):.0f}" for k in ("torch", "a", "d")) + " |",
        "| ingest (encode_with_sentences, every core), profiles/s | " + " | ".join(
            f"{f['ingest'][r]:.1f}" for r in rt) + " |",
        "| cosine to torch, min / mean (titles, call texts, profiles) | 1 | " + " | ".join(
            f"{f['cosine'][r][0]:.6f} / {f['cosine'][r][1]:.6f}" for r in ("onnx", "int8")) + " |",
        "",
        "Call texts (the dev queries, title + description), options for the long text; quality against the "
        "evaluation store (profiles embedded with torch fp32), queries embedded by each variant:",
        "",
        "| query vectors | encode p50 ms (1 thread) | product nDCG@10 | product R@50 | product MRR | "
        "dense nDCG@10 | dense R@50 | dense MRR |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in ("torch", *OPTIONS):
        q = f["quality"][key]
        label = "torch, every window (baseline)" if key == "torch" else OPTION_LABELS[key] + (
            "" if key == "d" else ", ONNX fp32")
        lines.append(f"| {label} | {percentile(f['call_ms'][key], 50):.0f} | " + " | ".join(
            f"{q[r][m]:.4f}" for r in ("product", "dense") for m in ("nDCG@10", "R@50", "MRR")) + " |")
    lines += ["", "Memory (MiB) after loading the encoder and encoding 12 texts: one process; and a gunicorn-like "
              "master that loads it without running it, with 2 forked workers that encode (PSS splits shared pages):",
              "", "| runtime | one process PSS / RSS | master PSS | worker PSS (each) | master + 2 workers PSS |",
              "|---|---|---|---|---|"]
    for runtime in ("torch", "onnx"):
        one, g = f["memory"][f"{runtime} single"], f["memory"][f"{runtime} gunicorn"]
        total = g["master"]["Pss"] + sum(w["Pss"] for w in g["workers"])
        lines.append(f"| {runtime} | {one['Pss']:.0f} / {one['Rss']:.0f} | {g['master']['Pss']:.0f} | "
                     + " / ".join(f"{w['Pss']:.0f}" for w in g["workers"]) + f" | {total:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=None, help="only the first N dev queries")
    parser.add_argument("--profiles", type=int, default=128, help="pool profiles for the ingest figure")
    parser.add_argument("--work", default="/tmp/encoder-bench", help="scratch folder: the export, the int8 model")
    parser.add_argument("--store", default="/tmp/encoder-bench/eval-pool", help="where the evaluation store is copied")
    parser.add_argument("--probe", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.probe:
        mode, runtime, data_dir = args.probe
        texts = json.loads(sys.stdin.read())
        print(json.dumps((single if mode == "single" else probe)(runtime, data_dir, texts)))
        return 0

    from importlib.metadata import version

    from matcher.evaluation import query_text, read_jsonl
    from matcher.text import entity_text
    from models.enums import EntityKind

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    figures: dict = {"when": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(), "load_before": load(),
                     "versions": {n: version(n) for n in ("onnxruntime", "torch")}}
    log(f"load average {figures['load_before']}")
    queries = read_jsonl(DATA / "dev_queries.jsonl.gz")[: args.queries]
    titles = [q["title"].strip() for q in queries]
    calls = [query_text(q) for q in queries]
    profiles = []
    for doc in read_jsonl(DATA / "pool.jsonl.gz"):
        profiles.append(entity_text(EntityKind.organisations, doc))
        if len(profiles) == args.profiles:
            break
    store = store_copy(Path(args.store))  # before the models load: the copy needs no memory of theirs
    enc = encoders(work)
    figures["model"] = enc["onnx"].name
    counts = enc["torch"].token_count(calls)
    figures.update(n_titles=len(titles), n_calls=len(calls), n_profiles=len(profiles),
                   call_pieces=float(np.mean(counts)),
                   call_windows=float(np.mean([len(enc["torch"].windows(t, c)) for t, c in zip(calls, counts)])))

    log("one-line queries")
    title_vectors, figures["title_ms"] = per_text(enc, titles, {r: (r, None) for r in ("torch", "onnx", "int8")})
    log("call texts")
    call_vectors, figures["call_ms"] = per_text(enc, calls, {"torch": ("torch", None), **OPTIONS})
    log("ingest")
    figures["ingest"], profile_vectors = ingest(enc, profiles)
    figures["cosine"] = {r: cosines(np.vstack([title_vectors["torch"], call_vectors["torch"], profile_vectors["torch"]]),
                                    np.vstack([title_vectors[r], call_vectors["a" if r == "onnx" else "d"],
                                               profile_vectors[r]])) for r in ("onnx", "int8")}
    log(f"cosine to torch: {figures['cosine']}")
    figures["quality"] = dev_quality(store, enc["torch"], queries, call_vectors)
    figures["memory"] = memory_figures(work, titles[:10] + calls[:2])
    figures["load_after"] = load()
    OUT.mkdir(parents=True, exist_ok=True)
    text = report(figures)
    (OUT / "encoder.md").write_text(text)
    (OUT / "encoder.json").write_text(json.dumps(figures, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
