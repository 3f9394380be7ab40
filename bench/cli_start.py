"""How long a one-off ``python -m matcher match`` takes, start to exit, when the service's snapshots exist.

    .venv/bin/python bench/cli_start.py                # a fresh demo store in a temporary data dir, 5 runs each
    .venv/bin/python bench/cli_start.py --runs 10 --data-dir var   # an existing store (after make run)

Runs ``python -m matcher init`` (the step ``make run`` takes before gunicorn: demo data, index snapshots) unless
``--data-dir`` holds a store already, then times whole processes of ``python -m matcher match`` for a stored
challenge (against organisations), a stored organisation (against challenges) and, for comparison, a free text
(which must load the model to embed it). For each it prints the median and slowest wall time, the median CPU time
(user + system: what a machine shared with other work does not inflate) and whether the process imported
sentence-transformers, torch or scikit-learn. An id query needs neither: the query's vector, its title's
vector and the profiles' sentence vectors are stored, and the model's name is read from its folder. Exits 1 when
an id query's median is 3 s or more, or when one imported the model.
"""
from __future__ import annotations

import argparse
import ast
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT_S = 3.0
# The command's main, then which heavy modules the process ended up importing (on stderr, after the output).
PROBE = ("import sys; from matcher.cli import main; rc = main(sys.argv[1:]); "
         "print('MODEL-IMPORTED:', sorted(m for m in ('torch', 'sentence_transformers', 'sklearn') if m in sys.modules), "
         "file=sys.stderr); sys.exit(rc)")
QUERIES = [  # (name, arguments, whether it is a query for a stored id)
    ("challenge id -> organisations", ["--challenge-id", "ch-tampere-winter-cycling"], True),
    ("organisation id -> challenges", ["--organisation-id", "org-routa-sense", "--target", "challenges"], True),
    ("free text (loads the model)", ["--text", "sensors that detect ice on cycle paths"], False),
]


def _env(data_dir: Path) -> dict:
    return {**os.environ, "MATCHER_DATA_DIR": str(data_dir), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def run_once(args: list[str], env: dict) -> tuple[float, float, list[str]]:
    """Wall and CPU seconds (user + system, which a busy machine does not inflate) of one whole process, and the
    heavy modules it imported."""
    cpu_before, started = _children_cpu(), time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PROBE, "match", *args, "-k", "10"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    took, cpu = time.perf_counter() - started, _children_cpu() - cpu_before
    if done.returncode != 0:
        raise SystemExit(f"match {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    line = next(x for x in done.stderr.splitlines() if x.startswith("MODEL-IMPORTED:"))
    return took, cpu, ast.literal_eval(line.split(":", 1)[1].strip())


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per query (after one that is not timed)")
    parser.add_argument("--data-dir", type=Path, help="an existing data dir (default: a fresh demo store)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-start-") as tmp:
        data_dir = (args.data_dir or Path(tmp)).resolve()
        env = _env(data_dir)
        if not (data_dir / "matcher.db").exists():
            print(f"python -m matcher init in {data_dir} ...", flush=True)
            subprocess.run([sys.executable, "-m", "matcher", "--quiet", "init"], env=env, cwd=ROOT, check=True,
                           stdout=subprocess.DEVNULL)
        load = os.getloadavg()[0]
        rows, failed = [], False
        for name, query, by_id in QUERIES:
            run_once(query, env)  # not timed: the first process after init may compile bytecode
            times, cpus, imported = [], [], set()
            for _ in range(args.runs):
                took, cpu, heavy = run_once(query, env)
                times.append(took)
                cpus.append(cpu)
                imported.update(heavy)
            median = statistics.median(times)
            rows.append((name, median, max(times), statistics.median(cpus), sorted(imported)))
            if by_id and (median >= LIMIT_S or {"torch", "sentence_transformers"} & imported):
                failed = True
    print(f"\n`python -m matcher match -k 10`, whole process, {args.runs} runs each "
          f"({os.cpu_count()} CPUs, load average {load:.1f} at the start)\n")
    print("| query | median | slowest | CPU, median | heavy modules imported |\n|---|---:|---:|---:|---|")
    for name, median, slowest, cpu, imported in rows:
        print(f"| {name} | {median:.2f} s | {slowest:.2f} s | {cpu:.2f} s | {', '.join(imported) or 'none'} |")
    if failed:
        print(f"\nan id query took {LIMIT_S:.0f} s or more, or loaded the model", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
