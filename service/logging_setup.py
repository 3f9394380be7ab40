"""Logging for the service: the configured level, and no personal data in any log line.

Profiles carry contact e-mail addresses (personal data under the GDPR). The service never logs a profile on
purpose, but an unexpected error's message or traceback could quote one; ``RedactEmails`` replaces every
e-mail address in a record (message and traceback) before any handler writes it.
"""
from __future__ import annotations

import logging
import re

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+")
REDACTED = "<e-mail>"


def redact(text: str) -> str:
    return EMAIL.sub(REDACTED, text)


class RedactEmails(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message:
            record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text and "@" in record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def configure_logging(level: str) -> None:
    """The root logger at ``level``, every handler of it (and of gunicorn's error log) redacting addresses."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("", "gunicorn.error"):
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactEmails) for f in handler.filters):
                handler.addFilter(RedactEmails())
