"""The batch path on Ray Data, run locally: the same rows as the in-process runner."""
import json

import pytest

from matcher.batch import run_batch_file
from models.enums import EntityKind
from tests.conftest import ORGS

ray = pytest.importorskip("ray")


@pytest.fixture
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_ray_data_runner_gives_the_same_rows_as_the_local_runner(engine, tmp_path, local_ray):
    engine.upsert_many(EntityKind.organisations, ORGS)
    queries = [{"text": f"{o['description']} Need {i}."} for i in range(3) for o in ORGS]
    queries += [{"organisation_id": o["id"]} for o in ORGS] + [{"organisation_id": "nobody"}]
    src = tmp_path / "q.jsonl"
    src.write_text("\n".join(json.dumps(q) for q in queries) + "\n")
    local = run_batch_file(engine, src, tmp_path / "local.jsonl", k=5, progress=False)
    on_ray = run_batch_file(engine, src, tmp_path / "ray.jsonl", k=5, runner="ray", actors=1, progress=False)
    assert on_ray.queries == local.queries == 28 and on_ray.rows == 28 * 5
    assert [str(e) for e in on_ray.errors] == [str(e) for e in local.errors] == ["line 29: organisation_id: no organisation with id 'nobody'"]
    assert (tmp_path / "ray.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()
