"""Keep credentials out of logged params: a config key naming a token, key, secret or password
(e.g. `+db.password=${oc.env:PGPASSWORD}`) is dropped before MLflow sees the config."""

from __future__ import annotations

import re
from typing import Any

SECRET_KEY = re.compile(r"token|key|secret|password|passwd|credential", re.IGNORECASE)


# scheme://user:password@host -> scheme://user:***@host (a database URL in a sweep's storage)
URL_PASSWORD = re.compile(r"(\w[\w+.-]*://[^:/@\s]+:)[^@\s]+@")


def redact(config: Any) -> Any:
    """A config (dict, list, str) without secret keys, and every URL in it without its password:
    what goes into logged params, config files and log lines (a sweep's storage URL)."""
    if isinstance(config, dict):
        return {k: redact(v) for k, v in config.items() if not SECRET_KEY.search(str(k))}
    if isinstance(config, list):
        return [redact(v) for v in config]
    if isinstance(config, str):
        return URL_PASSWORD.sub(r"\1***@", config)
    return config
