"""The console's tool pages, as journeys in headless Chromium against a real gunicorn (the demo data): a batch job
from an uploaded spreadsheet with a bad row, followed to 100% and downloaded; consortia with a required type
group and their heat maps; a brokerage schedule built from uploaded files and downloaded as a zip whose .ics
files parse. Each journey fails if a page shows an error it did not provoke or asks another host for anything
(tests/service/console_fixtures.py); screenshots at 390 and 1280 px go to $MATCHER_SCREENSHOTS.
"""
from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest
import requests
from openpyxl import load_workbook

from matcher.batch import COLUMNS
from matcher.demo import DEMO_DIR
from tests.matcher.test_schedule import parse_ics
from tests.service import console_fixtures

# the fixtures, bound to module names
browser, console_server, journey = console_fixtures.browser, console_fixtures.console_server, console_fixtures.journey

CHALLENGE = "ch-tampere-winter-cycling"


def api(server, path: str) -> dict:
    r = requests.get(f"{server.base}{path}", headers={"Authorization": f"Bearer {server.keys['admin']}"}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def write_csv(path, rows: list[list]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)
    return str(path)


@pytest.mark.slow
def test_a_batch_file_with_a_bad_row_runs_to_100_percent_and_downloads(journey, console_server, tmp_path):
    challenges = [json.loads(line)["id"] for line in open(DEMO_DIR / "challenges.jsonl", encoding="utf-8")][:24]
    rows = [["text", "challenge_id", "organisation_id"]] + [["", c, ""] for c in challenges]
    rows.insert(6, ["", "", "org-nobody"])  # line 7 of the file: an organisation that is not stored
    rows.append(["Sensors that count cyclists through the winter", "", ""])
    queries = write_csv(tmp_path / "queries.csv", rows)
    good_lines = {str(line) for line in range(2, len(rows) + 1) if line != 7}
    k = 3

    j = journey(key="admin")
    page = j.page
    # A file that is no table: refused beside its field, nothing queued
    j.goto("/console/batch")
    (tmp_path / "notes.txt").write_text("hello")
    page.get_by_label("Queries file").set_input_files(str(tmp_path / "notes.txt"))
    j.expected.add(400)
    page.get_by_role("button", name="Start the job").click()
    page.wait_for_selector("#f-queries-error")
    assert "must be a .csv, .jsonl, .json or .xlsx file" in page.locator("#f-queries-error").inner_text()
    assert page.get_by_label("Queries file").get_attribute("aria-invalid") == "true"
    page.wait_for_function("document.activeElement.hasAttribute('data-error-summary')", timeout=5_000)  # focused
    j.shoot("batch-error")

    # The real file: the job page follows its progress in place until 100%
    page.get_by_label("Queries file").set_input_files(queries)
    page.get_by_label("Matches per query").fill(str(k))
    page.get_by_role("button", name="Start the job").click()
    page.wait_for_url("**/console/batch/job-*")
    j.assert_no_error_shown()
    job_id = page.url.rsplit("/", 1)[1]
    page.evaluate("window.notReloaded = true")
    seen, deadline = [], time.time() + 300  # the job worker may still be loading the model
    while True:
        seen.append(int(page.locator("[data-progress-percent]").inner_text().rstrip("%")))
        if page.locator(".job .state-done").count():
            break
        assert time.time() < deadline and not page.locator(".job .state-failed").count(), seen
        page.wait_for_timeout(200)
    j.wait_for_fragments()
    seen.append(int(page.locator("[data-progress-percent]").inner_text().rstrip("%")))
    assert seen[0] < 100 and seen[-1] == 100 and seen == sorted(seen), seen
    assert page.evaluate("window.notReloaded === true")  # the part was reloaded, not the page
    bar = page.locator("progress#job-progress")
    assert bar.get_attribute("value") == bar.get_attribute("max") == str(len(good_lines))
    assert f"{len(good_lines)} of {len(good_lines)} queries matched" in page.locator("#job-progress-text").inner_text()
    bad = page.locator(".bad-rows li")
    assert bad.count() == 1 and "Line 7" in bad.inner_text() and "org-nobody" in bad.inner_text()
    j.shoot("batch-job")

    # The downloads hold every good query's k best matches, by the query's line in the file
    with page.expect_download() as info:
        page.get_by_role("link", name="Download CSV").click()
    with open(info.value.path(), encoding="utf-8", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert list(table[0]) == COLUMNS and len(table) == k * len(good_lines)
    assert {r["query_line"] for r in table} == good_lines
    assert all(Counter(r["query_line"] for r in table)[line] == k for line in good_lines)
    assert {r["rank"] for r in table} == {"1", "2", "3"} and all(r["match_id"].startswith("org-") for r in table)
    assert table[0]["query_id"] == challenges[0]
    with page.expect_download() as info:
        page.get_by_role("link", name="Download XLSX").click()
    assert info.value.suggested_filename.startswith(f"batch-{job_id}-") and info.value.suggested_filename.endswith(".xlsx")
    sheet = list(load_workbook(io.BytesIO(Path(info.value.path()).read_bytes())).active.iter_rows(values_only=True))
    assert list(sheet[0]) == COLUMNS and len(sheet) == len(table) + 1
    # The API shows the same job, its bad row with its line in the file
    job = api(console_server, f"/v1/jobs/{job_id}")
    assert job["errors"] == [{"field": "queries[5].organisation_id", "problem": "no organisation with id 'org-nobody'",
                              "line": 7}]

    # Recent jobs list it; an unknown job is a 404 page; batch is an admin's page, as /v1/jobs is
    j.goto("/console/batch")
    assert job_id in page.locator("section", has_text="Recent jobs").inner_text()
    j.shoot("batch")
    j.goto("/console/batch/job-nope", expect=404)
    m = journey(key="match")
    assert m.page.get_by_role("link", name="Batch").count() == 0
    m.goto("/console/batch", expect=403)


@pytest.mark.slow
def test_a_consortium_with_a_required_group_shows_its_heat_map(journey):
    j = journey(key="match")
    page = j.page
    j.goto("/console/consortia")
    page.get_by_label("Challenge", exact=True).select_option(CHALLENGE)
    page.get_by_label("Members").fill("4")
    page.get_by_label("Alternatives").fill("2")
    group = page.get_by_role("group", name="Required group 1")
    group.get_by_label("University").check()
    group.get_by_label("Research institute").check()
    # An organisation that is not stored: the engine's problem is shown beside "Must include"
    page.get_by_label("Must include").fill("org-nobody")
    j.expected.add(400)
    page.get_by_role("button", name="Propose consortia").click()
    page.wait_for_selector("#f-must_include-error")
    assert "no organisation with id 'org-nobody'" in page.locator("#f-must_include-error").inner_text()
    assert page.get_by_role("group", name="Required group 1").get_by_label("University").is_checked()  # kept

    page.get_by_label("Must include").fill("")
    page.get_by_role("button", name="Propose consortia").click()
    page.wait_for_selector(".consortium", timeout=120_000)
    j.assert_no_error_shown()
    aspects = int(page.locator("#h-results + .meta").inner_text().split("’s ")[1].split()[0])
    teams = page.locator(".consortium")
    assert teams.count() == 2 and aspects >= 5
    for i in range(2):
        team = teams.nth(i)
        members = team.locator(".members > li")
        assert members.count() == 4 and team.locator(".warning").count() == 0
        kinds = members.locator(".meta").all_inner_texts()
        assert any(k.startswith(("University", "Research institute")) for k in kinds), kinds
        assert all(li.locator(".role").inner_text().startswith("Role: ") for li in members.all())
        assert all(len(li.locator(".why").inner_text()) > 20 for li in members.all())
        heat = team.locator("table.heat")
        assert heat.locator("thead th").count() == 1 + 4
        assert heat.locator("tbody tr").count() == aspects
        cells = heat.locator("tbody td")
        assert cells.count() == 4 * aspects
        values = [float(t.split()[0]) for t in cells.all_inner_texts()]
        assert all(0 <= v <= 1 for v in values) and len(set(values)) > 4
        classes = cells.evaluate_all("cells => cells.map(c => c.className)")
        assert all(c.split()[0] in {f"heat-{b}" for b in range(5)} for c in classes)
        for row in heat.locator("tbody tr").all():  # each aspect names its best member
            assert row.locator("td.heat-best").count() >= 1
    # The heat map scrolls inside its own box, which the keyboard reaches with a visible focus ring
    box = teams.first.locator(".table-box")
    box.focus()
    assert box.evaluate("b => getComputedStyle(b).outlineStyle") == "solid"
    j.shoot("consortia")


@pytest.mark.slow
def test_a_brokerage_schedule_downloads_as_a_zip_of_agendas_and_calendars(journey, tmp_path):
    people = write_csv(tmp_path / "participants.csv", [
        ["id", "name", "type", "description", "available", "max_meetings", "requests", "blocked"],
        ["org-lichtveld", "", "", "", "", "3", "org-eindhoven-lighting;org-heliant", ""],
        ["org-eindhoven-lighting", "", "", "", "s1;s2", "2", "", ""],
        ["org-heliant", "", "", "", "", "", "org-lichtveld", ""],
        ["org-nachtzorg", "", "", "", "", "", "", "org-corvanta"],  # blocks someone not taking part: noted
        ["org-wattbrug", "", "", "", "", "", "", ""],
        ["org-ghost", "", "", "", "", "", "", ""],  # line 7: not stored, no profile
        ["org-gloeiwerk", "", "", "", "", "2", "", ""],
        ["lampworks", "Lampworks Collective", "sme", "Street lamp retrofits with dimming controllers, for towns.", "", "", "", ""],
    ])
    slots = write_csv(tmp_path / "slots.csv", [
        ["id", "start", "end", "tables", "location"],
        ["s1", "2027-03-15T09:00+01:00", "2027-03-15T09:20+01:00", "2", "Hall A, Eindhoven"],
        ["s2", "2027-03-15T09:30+01:00", "2027-03-15T09:50+01:00", "2", "Hall A, Eindhoven"],
        ["s3", "2027-03-15T10:00+01:00", "2027-03-15T10:20+01:00", "3", "Hall A, Eindhoven"],
    ])
    j = journey(key="match")
    page = j.page
    j.goto("/console/events")
    page.get_by_label("Participants file").set_input_files(people)
    page.get_by_label("Slots file").set_input_files(slots)
    page.get_by_role("button", name="Build the schedule").click()
    page.wait_for_selector("#h-grid", timeout=120_000)
    j.assert_no_error_shown()
    problems = page.locator(".bad-rows li").all_inner_texts()
    assert any(p.startswith("Line 7:") and "org-ghost" in p for p in problems), problems
    assert any(p.startswith("Line 5:") and "org-corvanta" in p for p in problems), problems
    grid = page.locator("table.schedule-grid")
    assert grid.locator("tbody tr").count() == 3
    shown = grid.locator("td.meeting").count()
    assert shown >= 5 and grid.locator("td.meeting.requested").count() >= 2
    assert "09:00–09:20 (UTC+01:00)" in grid.locator("tbody th").first.inner_text()
    agendas = page.locator(".agendas > li")
    assert agendas.count() == 7
    lamp = page.locator(".agendas summary", has_text="Lampworks Collective")
    lamp.focus()
    page.keyboard.press("Enter")  # a participant's agenda opens from the keyboard
    assert lamp.locator("xpath=..").get_attribute("open") is not None
    assert lamp.locator("xpath=..").locator(".agenda li").first.is_visible()
    j.shoot("events")

    with page.expect_download() as info:
        page.get_by_role("button", name="Download agendas and calendars (.zip)").click()
    archive = zipfile.ZipFile(info.value.path())
    names = archive.namelist()
    top = names[0].split("/")[0]
    assert top.startswith("brokerage-schedule-") and all(n.startswith(top + "/") for n in names)
    meetings = list(csv.DictReader(io.StringIO(archive.read(f"{top}/schedule.csv").decode("utf-8"))))
    assert len(meetings) == shown
    load = Counter(p for m in meetings for p in (m["participant_a"], m["participant_b"]))
    calendars = [n for n in names if n.startswith(f"{top}/calendars/")]
    agenda_files = [n for n in names if n.startswith(f"{top}/agendas/")]
    assert len(calendars) == len(agenda_files) == 7
    for name in calendars:
        pid = name.rsplit("/", 1)[1].removesuffix(".ics")
        events = parse_ics(archive.read(name))
        assert len(events) == load[pid], pid
        assert all(e["LOCATION"].endswith("Hall A, Eindhoven") and e["DTSTART"].endswith("Z") for e in events)
    agenda = archive.read(f"{top}/agendas/lampworks.md").decode("utf-8")
    assert agenda.startswith("# Agenda: Lampworks Collective (lampworks)") and agenda.count("\n- ") == load["lampworks"]
    assert json.loads(archive.read(f"{top}/summary.json"))["meetings"] == shown
