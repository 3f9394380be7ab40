"""The txtai side of bench/txtai_compare.py, run with var/txtai-venv/bin/python (txtai is not in the product's venv).

    python bench/txtai_app.py build PROFILES INDEX --model DIR [--threads 2]
    python bench/txtai_app.py run INDEX QUERIES [--threads 1]

build: a txtai Embeddings index of the profiles (a JSON lines file of {"id", "text"}), written to the folder INDEX.
  Config: CONFIG below with `path` = the model folder: txtai's own transformers mean pooling (its default for a
  sentence-transformers folder), a dense Faiss index plus a BM25 term index, hybrid scores, the texts kept (content).
run: load INDEX; time `embeddings.search(text, 10)` over the one-line queries after a warm-up, then rank each call
  text (top 10 ids). QUERIES is a JSON file {"lines": [...], "warmup": int, "calls": [...]}. Prints one JSON object:
  {"lines_s": [seconds per search], "calls": [[ids]], "torch_threads", "versions"}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# hybrid: true = a BM25 term index (scoring: {method: bm25, terms: true, normalize: true}) beside the dense one,
# scores fused with weights 0.5/0.5 (txtai's default); content: true keeps the texts in its SQLite database.
CONFIG = {"hybrid": True, "content": True}


def versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("txtai", "torch", "transformers", "faiss-cpu", "uvicorn", "fastapi")}


def build(args) -> None:
    import torch
    from txtai import Embeddings

    torch.set_num_threads(args.threads)
    with open(args.profiles, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    embeddings = Embeddings({**CONFIG, "path": args.model})
    started = time.perf_counter()
    embeddings.index((row["id"], row["text"], None) for row in rows)
    index_s = time.perf_counter() - started
    embeddings.save(args.index)
    assert embeddings.count() == len(rows), (embeddings.count(), len(rows))
    print(json.dumps({"count": len(rows), "index_s": index_s, "index_config": embeddings.config, "versions": versions(),
                      "torch_threads": args.threads}, default=str))


def run(args) -> None:
    import torch
    from txtai import Embeddings

    torch.set_num_threads(args.threads)
    with open(args.queries, encoding="utf-8") as fh:
        queries = json.load(fh)
    embeddings = Embeddings()
    embeddings.load(args.index)
    lines = queries["lines"]
    for text in lines[: queries["warmup"]]:
        embeddings.search(text, 10)
    lines_s = []
    for text in lines[queries["warmup"]:]:
        t0 = time.perf_counter()
        found = embeddings.search(text, 10)
        lines_s.append(time.perf_counter() - t0)
        assert found, f"no result for {text!r}"
    calls = [[r["id"] for r in embeddings.search(text, 10)] for text in queries["calls"]]
    print(json.dumps({"lines_s": lines_s, "calls": calls, "torch_threads": torch.get_num_threads(), "versions": versions()}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("build", help="index the profiles and save the index")
    p.add_argument("profiles")
    p.add_argument("index")
    p.add_argument("--model", required=True, help="the sentence-transformers model folder")
    p.add_argument("--threads", type=int, default=2, help="torch threads while embedding (default 2)")
    p.set_defaults(func=build)
    p = sub.add_parser("run", help="in-process latency of one-line queries, then the top 10 of each call text")
    p.add_argument("index")
    p.add_argument("queries")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as one API worker)")
    p.set_defaults(func=run)
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
