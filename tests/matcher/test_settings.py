"""The settings: each read from its variable as documented, and the README's table is the settings that exist."""
import dataclasses
import os
from pathlib import Path

import pytest

from matcher import cli
from matcher.settings import Settings, settings_table
from tests.conftest import ROOT


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in [n for n in os.environ if n.startswith("MATCHER_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def readme_table() -> str:
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| variable | default | meaning |")
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return "\n".join(lines[start:end])


def test_the_readme_lists_exactly_the_settings_with_their_defaults():
    documented = readme_table()
    assert documented == settings_table(), "the README's table is stale: paste `python -m matcher settings --markdown`"
    names = [line.split("`")[1] for line in documented.splitlines()[2:]]
    assert names == [f.metadata["env"] for f in dataclasses.fields(Settings)]
    assert len(names) == len(set(names)) and all(n.startswith("MATCHER_") for n in names)
    assert "| `MATCHER_PORT` | `8000` |" in documented and "| `MATCHER_DIGEST_MIN_SCORE` | `0.05` |" in documented


def test_defaults_are_the_documented_ones(clean_env, tmp_path):
    s = Settings.from_env()
    var = tmp_path.resolve() / "var"
    assert s.data_dir == var and s.db_url == f"sqlite:///{var / 'matcher.db'}"
    assert (s.port, s.workers, s.max_body_bytes, s.job_poll_s, s.digest_rate) == (8000, 2, 16 * 1024 * 1024, 1.0, 5.0)
    assert s.load_demo is True and s.auth is True and s.job_runner is True
    assert s.platform_url == "http://127.0.0.1:8000" and s.smtp_security == "starttls" and s.smtp_password == ""
    # every documented default reads back as the value a missing variable gives
    for f in dataclasses.fields(Settings):
        if f.metadata["default"] and f.name != "data_dir":
            clean_env.setenv(f.metadata["env"], f.metadata["default"])
    assert Settings.from_env() == s


def test_variables_are_read_parsed_and_normalised(clean_env):
    for name, value in {"MATCHER_PORT": " 9001 ", "MATCHER_HOST": "  ", "MATCHER_LOG_LEVEL": "DEBUG",
                        "MATCHER_PUBLIC_URL": "https://match.example.org/api//", "MATCHER_SMTP_SECURITY": "SSL",
                        "MATCHER_BATCH_RUNNER": "Ray", "MATCHER_SMTP_PASSWORD": "  two spaces ", "MATCHER_SMTP_USER": " bob ",
                        "MATCHER_DIGEST_MIN_SCORE": "0.2", "MATCHER_DB_URL": "postgresql+psycopg://u@h/db"}.items():
        clean_env.setenv(name, value)
    s = Settings.from_env()
    assert (s.port, s.host, s.log_level, s.public_url) == (9001, "127.0.0.1", "debug", "https://match.example.org/api")
    assert (s.smtp_security, s.batch_runner, s.digest_min_score) == ("ssl", "ray", 0.2)
    assert s.smtp_password == "  two spaces " and s.smtp_user == "bob"  # a password is read as is
    assert s.db_url == "postgresql+psycopg://u@h/db"
    clean_env.setenv("MATCHER_PORT", "eighty")
    with pytest.raises(ValueError):
        Settings.from_env()


@pytest.mark.parametrize("text, expected", [("1", True), ("on", True), ("Yes", True), ("TRUE", True), ("0", False),
                                            ("off", False), ("no", False), ("maybe", False),
                                            ("", True), ("  ", True)])  # blank: the default
def test_flags(clean_env, text, expected):
    clean_env.setenv("MATCHER_AUTH", text)
    assert Settings.from_env().auth is expected


def test_data_dir_resolves_and_the_database_follows_it(clean_env, tmp_path):
    clean_env.setenv("MATCHER_DATA_DIR", "~/matcher-data")
    assert Settings.from_env().data_dir == Path("~/matcher-data").expanduser().resolve()
    clean_env.setenv("MATCHER_DATA_DIR", "rel/data")
    clean_env.setenv("MATCHER_DB_URL", "sqlite:///elsewhere.db")
    s = Settings.from_env()
    assert s.data_dir == tmp_path.resolve() / "rel" / "data" and s.db_url == "sqlite:///elsewhere.db"
    moved = Settings.from_env(data_dir="other")  # an overridden data dir brings its own database ...
    other = tmp_path.resolve() / "other"
    assert moved.data_dir == other and moved.db_url == f"sqlite:///{other / 'matcher.db'}"
    both = Settings.from_env(data_dir="other", db_url="sqlite:///given.db", port=1)  # ... unless one is given too
    assert (both.db_url, both.port) == ("sqlite:///given.db", 1)


def test_describe_masks_secrets_that_are_set(clean_env):
    assert Settings.from_env().describe()["secret_key"] == ""
    clean_env.setenv("MATCHER_SECRET_KEY", "s3cret")
    clean_env.setenv("MATCHER_SMTP_PASSWORD", "pw")
    described = Settings.from_env().describe()
    assert described["secret_key"] == described["smtp_password"] == "***" and described["port"] == "8000"
    assert set(described) == {f.name for f in dataclasses.fields(Settings)}


def test_cli_prints_the_settings_and_the_table(clean_env, capsys):
    clean_env.setenv("MATCHER_SECRET_KEY", "s3cret")
    assert cli.main(["settings"]) == 0
    out = capsys.readouterr().out
    assert '"secret_key": "***"' in out and "s3cret" not in out
    assert cli.main(["settings", "--markdown"]) == 0
    assert capsys.readouterr().out.strip() == settings_table()


def test_the_unsubscribe_link_follows_the_port_unless_public_url_is_set(clean_env):
    assert Settings.from_env().public_url == "http://127.0.0.1:8000"
    clean_env.setenv("MATCHER_PORT", "9001")
    assert Settings.from_env().public_url == "http://127.0.0.1:9001"
    clean_env.setenv("MATCHER_HOST", "0.0.0.0")  # a wildcard address is reached at the loopback one
    assert Settings.from_env().public_url == "http://127.0.0.1:9001"
    assert Settings.from_env(host="::1", port=8443).public_url == "http://[::1]:8443"
    clean_env.setenv("MATCHER_PUBLIC_URL", "https://match.example.org/")
    assert Settings.from_env().public_url == "https://match.example.org"
