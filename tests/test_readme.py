"""The README as a user reads it: its field lists are the API's fields, and its curl examples, run in the order
printed against a fresh `make run`, answer the status each one documents."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time

import pytest

from service.openapi import openapi_spec
from tests.conftest import ROOT

README = (ROOT / "README.md").read_text()

# "**<label>** fields: ..." in the README -> the OpenAPI component (generated from the pydantic models) it lists.
FIELD_LISTS = {
    "Organisation": "OrganisationIn",
    "Challenge": "ChallengeIn",
    "Match request": "MatchRequest",
    "Match query": "MatchQuery",
    "Match filters": "MatchFilters",
    "Near": "Near",
    "Match timings": "MatchTimings",
    "Match response": "MatchResponse",
    "Match": "Match",
    "Explanation": "Explanation",
    "Batch job request": "BatchJobRequest",
    "Consortium request": "ConsortiumRequest",
}
# Components the README describes in prose instead (where it says so); any other new model needs a field list.
IN_PROSE = {
    "BatchMatchRequest": "a list of match requests (the Match request list says so)",
    "Error": "the error shape at the top of Using the API",
    "Job": "Batch jobs over HTTP", "JobProgress": "Batch jobs over HTTP",
    "ConsortiumResponse": "Consortium builder", "Consortium": "Consortium builder",
    "ConsortiumMember": "Consortium builder", "ConsortiumAspect": "Consortium builder",
    "PastProject": "the Organisation list's past_projects", "RelatedProject": "the Explanation list's related_projects",
}


def _without_parentheses(text: str) -> str:
    while True:
        shorter = re.sub(r"\([^()]*\)", "", text)
        if shorter == text:
            return text
        text = shorter


def readme_field_lists() -> dict[str, set[str]]:
    """Each "**Label** fields:" paragraph's field names: in its first sentence, every `name` outside parentheses
    (which hold values and remarks; the sentences after it are prose); in a bullet list under it, the `names`
    before each bullet's first colon (nested bullets are values)."""
    lists = {}
    for match in re.finditer(r"^\*\*([A-Z][\w ]*)\*\* fields(.*?)(?=\n\n)", README, re.M | re.S):
        label, lines = match.group(1), match.group(2).split("\n")
        prose = " ".join(line for line in lines if not line.startswith(("- ", "  ")))  # "  ": nested, or continued
        first_sentence = re.split(r"\.(?:\s|$)", _without_parentheses(prose), maxsplit=1)[0]
        bullets = [_without_parentheses(line.split(": ", 1)[0]) for line in lines if line.startswith("- ")]
        names = set(re.findall(r"`([a-z_]+)`", " ".join([first_sentence, *bullets])))
        assert label not in lists, f"two field lists for {label}"
        lists[label] = names
    return lists


def test_the_field_lists_are_the_fields_of_the_openapi_document():
    components = openapi_spec()["components"]["schemas"]
    documented = readme_field_lists()
    assert set(FIELD_LISTS) <= set(documented), f"README lacks the field lists of {set(FIELD_LISTS) - set(documented)}"
    differences = []
    for label, component in FIELD_LISTS.items():
        fields = set(components[component]["properties"])
        if documented[label] != fields:
            differences.append(f"**{label}** fields ({component}): not in the README {sorted(fields - documented[label])}, "
                               f"not in the API {sorted(documented[label] - fields)}")
    assert not differences, "the README's field lists differ from the API's:\n" + "\n".join(differences)
    with_fields = {name for name, schema in components.items() if schema.get("properties")}
    undocumented = with_fields - set(FIELD_LISTS.values()) - set(IN_PROSE)
    assert not undocumented, f"give these models a '**Label** fields:' list in the README (and FIELD_LISTS): {undocumented}"


def test_the_example_match_response_has_only_documented_fields():
    components = openapi_spec()["components"]["schemas"]
    examples = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", README, re.S) if '"matches"' in block]
    assert examples
    for example in examples:
        assert set(example) <= set(components["MatchResponse"]["properties"])
        for m in example["matches"]:
            assert set(m) <= set(components["Match"]["properties"])
            assert set(m.get("explanation") or {}) <= set(components["Explanation"]["properties"])


# --- the curl examples ------------------------------------------------------------------------------------------

STATUS = re.compile(r"-> (\d{3})(?: \((\d{3}) until)?")
PLACEHOLDERS = ("NEXT_CURSOR", "JOB_ID", "ETAG")


def curl_examples() -> list[tuple[list[str], int, int | None, str]]:
    """Every curl command of the README's sh blocks, in order: (arguments, documented status, the status it
    answers while not yet there (a job's result) or None, the command as printed). A command runs on until its
    quotes close and its line does not end in a backslash; its status is the comment "-> NNN" on its last line."""
    examples = []
    for block in re.findall(r"```sh\n(.*?)```", README, re.S):
        lines, i = block.split("\n"), 0
        while i < len(lines):
            if not lines[i].lstrip().startswith("curl "):
                i += 1
                continue
            command = lines[i]
            while True:
                try:
                    shlex.split(command, comments=True)
                    closed = not command.rstrip().endswith("\\")
                except ValueError:  # a quote still open: the body goes on
                    closed = False
                if closed:
                    break
                i += 1
                command += "\n" + lines[i]
            last_line = command.rsplit("\n", 1)[-1]
            status = STATUS.search(last_line[last_line.rfind("#"):]) if "#" in last_line else None
            assert status, f"a README curl example without its status ('# -> 200'):\n{command}"
            args = shlex.split(command.replace("\\\n", " "), comments=True)
            examples.append((args, int(status.group(1)), int(status.group(2)) if status.group(2) else None, command))
            i += 1
    return examples


def test_every_curl_example_documents_its_status():
    examples = curl_examples()
    assert len(examples) >= 25
    assert {status for _, status, _, _ in examples} >= {200, 201, 202, 204, 400, 404, 409}


@pytest.mark.slow
def test_the_examples_run_in_the_order_printed_against_a_fresh_make_run(tmp_path):
    """`make run`'s two steps (matcher init, then gunicorn with service/gunicorn_conf.py) on a fresh data dir and a
    free port; each example is run with curl as printed (KEY from the demo key, NEXT_CURSOR, JOB_ID and ETAG from
    the answers before) and must answer its documented status."""
    from tests.service.test_gunicorn import free_port, start_gunicorn, stop_gunicorn

    data, port = tmp_path / "var", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MATCHER_")}
    env.update({"MATCHER_DATA_DIR": str(data), "MATCHER_PORT": str(port), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    init = subprocess.run([sys.executable, "-m", "matcher", "-q", "init"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert init.returncode == 0, init.stderr
    key = (data / "demo_key").read_text().strip()
    assert key in init.stdout  # make run prints it
    proc, _, log = start_gunicorn(env, data / "gunicorn.log")
    values: dict[str, str] = {}
    try:
        for args, expected, interim, printed in curl_examples():
            args = [a.replace("$KEY", key).replace("localhost:8000", f"127.0.0.1:{port}") for a in args]
            for name, value in values.items():
                args = [a.replace(name, value) for a in args]
            deadline = time.time() + 300
            while True:
                status, body, headers = _curl(args, tmp_path)
                if status != interim or time.time() > deadline:
                    break
                time.sleep(0.5)
            assert status == expected, f"README example answered {status}, not {expected}:\n{printed}\n{body[:2000]}"
            answer = json.loads(body) if body.startswith(("{", "[")) else None
            if isinstance(answer, dict):
                if answer.get("next_cursor"):
                    values["NEXT_CURSOR"] = answer["next_cursor"]
                if str(answer.get("id", "")).startswith("job-"):
                    values["JOB_ID"] = answer["id"]
            if "etag" in headers:
                values["ETAG"] = headers["etag"].strip('"')
            assert not any(p in " ".join(args) for p in PLACEHOLDERS if p not in values), printed
    finally:
        stop_gunicorn(proc, log)


def _curl(args: list[str], folder) -> tuple[int, str, dict[str, str]]:
    """The status, body and headers (lower-case names) of one curl command."""
    assert args[0] == "curl"
    body, head = folder / "body", folder / "headers"
    for path in (body, head):
        path.unlink(missing_ok=True)
    done = subprocess.run([*args, "-o", str(body), "-D", str(head), "-w", "%{http_code}", "--max-time", "300"],
                          capture_output=True, text=True, timeout=320)
    assert done.returncode == 0, done.stderr
    headers = dict(line.split(":", 1) for line in head.read_text().splitlines() if ":" in line)
    return (int(done.stdout), body.read_text() if body.exists() else "",
            {k.strip().lower(): v.strip() for k, v in headers.items()})
