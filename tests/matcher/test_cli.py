"""The command line as a user runs it: real files, a real SQLite file, the real model."""
import json
import os
import subprocess
import sys

import pytest

from matcher import cli
from matcher.records import read_records
from tests.conftest import ORGS, ROOT


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("MATCHER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MATCHER_LOAD_DEMO", "0")
    monkeypatch.delenv("MATCHER_DB_URL", raising=False)
    return tmp_path


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_import_with_bad_rows_reports_lines_and_imports_nothing(env, capsys):
    bad = write_jsonl(env / "orgs.jsonl", [ORGS[0], ORGS[1], '{"name": "broken json"', "",
                                           {**ORGS[2], "type": "wizard"}, {**ORGS[3], "id": ORGS[0]["id"]}])
    assert cli.main(["-q", "import", "organisations", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "line 3: not valid JSON" in err
    assert "line 5: type:" in err
    assert "line 6: id: 'voltgrid' repeats line 1" in err
    assert "nothing was imported" in err
    assert cli.main(["-q", "status"]) == 0
    assert json.loads(capsys.readouterr().out)["indexed"]["organisations"] == 0


def test_import_jsonl_and_csv_then_match(env, capsys):
    good = write_jsonl(env / "orgs.jsonl", ORGS[:5])
    assert cli.main(["-q", "import", "organisations", str(good)]) == 0
    csv_file = env / "more.csv"
    csv_file.write_text(
        "id,name,type,description,offers,sectors,country,past_projects\n"
        'tu-tampere,Tampere Energy Systems Lab,university,"Battery ageing research, grid flexibility.",'
        'battery ageing tests;grid models,smart energy,FI,"[{""title"": ""GRIDFLEX"", ""year"": 2022, ""partner_ids"": [""elsewhere""]}]"\n'
    )
    assert cli.main(["-q", "import", "organisations", str(csv_file)]) == 0
    assert "imported 1 organisations" in capsys.readouterr().out
    assert cli.main(["match", "--text", "acoustic leak detection in pipes", "-k", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["matches"][0]["id"] == "aquasense" and len(result["matches"]) == 2
    assert cli.main(["match", "--organisation-id", "voltgrid", "-k", "3", "--type", "university"]) == 0
    out = capsys.readouterr().out
    assert "Tampere Energy Systems Lab" in out and "VoltGrid (" not in out
    assert cli.main(["match", "--challenge-id", "missing"]) == 1


def test_csv_errors_name_their_line(env, capsys):
    csv_file = env / "bad.csv"
    csv_file.write_text("name,type,description,country\nGood,sme,Fine,DE\nBad,sme,,XX\n")
    assert cli.main(["-q", "import", "organisations", str(csv_file)]) == 1
    err = capsys.readouterr().err
    assert "line 3: description:" in err and "line 3: country:" in err and "line 2" not in err


def test_read_records_formats(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"items": [{"name": "x"}, 5]}))
    records = list(read_records(tmp_path / "a.json"))
    assert records[0] == (1, {"name": "x"}) and "not a JSON object" in str(records[1][1])
    with pytest.raises(ValueError):
        list(read_records(tmp_path / "a.txt"))


@pytest.mark.slow
def test_python_dash_m_matcher_entry_point(env):
    """The real `python -m matcher` process: init loads the shipped demo data and match answers."""
    run_env = {**os.environ, "MATCHER_LOAD_DEMO": "1", "HF_HUB_OFFLINE": "1"}
    init = subprocess.run([sys.executable, "-m", "matcher", "-q", "init"], cwd=ROOT, env=run_env,
                          capture_output=True, text=True, timeout=600)
    assert init.returncode == 0, init.stderr
    assert "loaded the demo data" in init.stdout
    match = subprocess.run([sys.executable, "-m", "matcher", "match", "--text", "smart street lighting for a city", "-k", "5",
                            "--json"], cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=300)
    assert match.returncode == 0, match.stderr
    assert len(json.loads(match.stdout)["matches"]) == 5
    again = subprocess.run([sys.executable, "-m", "matcher", "-q", "init"], cwd=ROOT, env=run_env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "loaded the demo data" not in again.stdout
