"""The evaluation command on a slice of the real CORDIS benchmark, its metrics, and the training's leave-one-out."""
import json
import math
import os
import subprocess
import sys

import pytest

from matcher.evaluation import metrics, ndcg_at, sample_pool
from matcher.ranker import DEFAULT_PATH
from matcher.training import without_topic
from tests.conftest import CORDIS, ROOT


def test_metrics_by_hand():
    assert ndcg_at([True, False, True], 2, 10) == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    m = metrics(["x", "a", "y", "b"], {"a", "b", "c", "d"})
    assert m == {"nDCG@10": pytest.approx(ndcg_at([False, True, False, True], 4, 10)), "R@10": 0.5, "R@50": 0.5, "MRR": 0.5}
    assert metrics(["x"], {"a"})["MRR"] == 0.0


def test_sample_pool_keeps_every_relevant_organisation():
    pool = [{"id": str(i)} for i in range(100)]
    sample = sample_pool(pool, [{"relevant": ["5", "77"]}], 10)
    assert len(sample) == 10 and {"5", "77"} <= {p["id"] for p in sample}


def test_leave_one_topic_out_removes_the_topic_from_the_profile():
    doc = {"id": "o", "name": "Org", "type": "university", "n_past_projects": 3,
           "description": "Projects: Smart ports; Hydrogen cranes. Worked on: Green ports; Clean air. Fields: ports, hydrogen.",
           "past_projects": [{"title": "Hydrogen cranes", "year": 2022}, {"title": "Smart ports", "year": 2021},
                             {"title": "Clean air", "year": 2022}]}
    topic = {"titles": {"Green ports", "Hydrogen cranes"}, "year": 2022}
    out = without_topic(doc, topic)
    assert out["description"] == "Projects: Smart ports. Worked on: Clean air. Fields: ports, hydrogen."
    assert [p["title"] for p in out["past_projects"]] == ["Smart ports", "Clean air"]
    assert out["n_past_projects"] == 2 and doc["n_past_projects"] == 3  # the original is untouched
    alone = without_topic({**doc, "description": "Worked on: Green ports. Fields: ports."}, topic)
    assert alone["description"] == "Fields: ports."


@pytest.mark.slow
def test_evaluate_command_prints_the_product_beside_every_baseline(tmp_path):
    pool, queries = CORDIS / "bench" / "pool.jsonl.gz", CORDIS / "bench" / "dev_queries.jsonl.gz"
    if not pool.exists():
        pytest.skip(f"the CORDIS benchmark data is not at {pool}")
    artefact = tmp_path / "ranker.json"  # --calibrate below writes into it, not into the shipped one
    artefact.write_text(DEFAULT_PATH.read_text())
    env = {**os.environ, "MATCHER_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1", "MATCHER_RANKER": str(artefact)}
    cmd = [sys.executable, "-m", "matcher", "-q", "evaluate", "--pool", str(pool), "--queries", str(queries),
           "--limit", "4", "--pool-sample", "100", "--out", str(tmp_path / "result.json")]
    first = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    for label in ("popularity", "TF-IDF", "BM25", "dense, flat inner product", "hybrid: RRF", "product: hybrid + learned ranker",
                  "Filtered to SMEs and startups", "Calibration"):
        assert label in first.stdout
    assert "importing 100 organisations" in first.stderr and "embedding 4 queries" in first.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert set(result["rankers"]) == {"popularity", "tfidf", "bm25", "dense", "hybrid_rrf", "product"}
    assert result["queries"] == 4 and result["pool"] == 100
    for row in result["rankers"].values():
        assert all(0.0 <= row[key] <= 1.0 for key in ("nDCG@10", "R@10", "R@50", "MRR", "coverage@10"))
    # A rerun finds the pool and the query embeddings cached: nothing is imported or embedded again. With
    # --calibrate it refits the score calibration on its top 50 per query, reports it held out, and writes it.
    second = subprocess.run(cmd + ["--calibrate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    assert "importing" not in second.stderr and "embedding" not in second.stderr
    assert json.loads((tmp_path / "result.json").read_text())["rankers"] == result["rankers"]
    assert "Calibration refit (full model, 200 matches)" in second.stdout and "Held out (2 folds by query)" in second.stdout
    written = json.loads(artefact.read_text())
    refit = json.loads((tmp_path / "result.json").read_text())["calibration_refit"]
    assert written["version"] == refit["version"] != result["ranker"] and written["models"] == json.loads(DEFAULT_PATH.read_text())["models"]
    shipped = json.loads(DEFAULT_PATH.read_text()).get("calibration", {}).get("full", {"slope": 1.0, "offset": 0.0})
    assert written["calibration"]["full"]["slope"] == pytest.approx(shipped["slope"] * refit["slope"], abs=1e-5)
    assert written["calibration"]["full"]["fitted_on"].endswith(": top 50 of 4 queries, 100 organisations")
    # Ranked with the new calibration: other scores, the same order, so the same figures, under the new version.
    third = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr
    after = json.loads((tmp_path / "result.json").read_text())
    assert after["ranker"] == refit["version"] and after["rankers"] == result["rankers"]
    assert after["calibration"] != result["calibration"]
    # --text-only drops every track record first (a store of its own): the text model ranks, beside the baselines.
    text_only = subprocess.run(cmd + ["--text-only"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert text_only.returncode == 0, text_only.stderr
    assert "importing 100 organisations (0 stored already" in text_only.stderr
    plain = json.loads((tmp_path / "result.json").read_text())
    assert result["ranker_model"] == "full" and plain["ranker_model"] == "text" and plain["pool"] == 100
    assert plain["rankers"]["dense"] == result["rankers"]["dense"] and plain["rankers"]["product"] != result["rankers"]["product"]
