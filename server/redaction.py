"""Log redaction: configured secrets (API key, bearer tokens, database password) never reach a log line, whatever
library logs them, at whatever level, through whatever handler.

It works at record creation (``logging.setLogRecordFactory``), so it also covers loggers with their own handlers
(FastMCP's, uvicorn's) that a handler filter on the root logger would miss. Exceptions are formatted and redacted
up front.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

from redraft.settings import Settings, mask_secrets, url_password

MASK = "****"


def secrets_of(settings: Settings) -> list[str]:
    password = url_password(settings.database_url)  # read even from a malformed URL, which urlsplit refuses
    values = [settings.api_key.get_secret_value(), *settings.auth_tokens, password, unquote(password)]
    return sorted({v for v in values if v and len(v) >= 4}, key=len, reverse=True)


def redact(text: str, secrets: list[str]) -> str:
    """``text`` without any of ``secrets`` or any ``scheme://user:password@`` password."""
    return mask_secrets(text, secrets)


def install(settings: Settings) -> None:
    secrets = secrets_of(settings)
    if not secrets:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            return record
        cleaned = redact(message, secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info), secrets)
            record.exc_info = None
        return record

    logging.setLogRecordFactory(factory)
