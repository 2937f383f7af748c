"""Pseudonyms for DICOM UIDs: keyed hashes that cannot be re-linked without this installation's secret.

A plain hash of a UID is no pseudonym: anyone holding the hospital's UID can hash it and find the exam. Every UID
cinema writes or prints is instead ``HMAC-SHA256(secret, uid)`` (truncated), with a random secret made once per
installation and kept readable by its owner only. The same UID gives the same pseudonym on this installation, so
exams and series can still be told apart and matched across runs (and chosen with ``--study``).

The secret lives in ``$CINEMA_CONFIG_DIR/uid-secret`` (default ``$XDG_CONFIG_HOME/cinema`` or ``~/.config/cinema``).
Keep it to re-identify your own outputs later; delete it to make every earlier pseudonym unlinkable.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from pathlib import Path

from cinema.io.errors import InputError

__all__ = ["config_dir", "pseudonymise_uid", "redact_pydicom_log", "secret_path"]

PREFIX = "uid:"
_SECRET_BYTES = 32
_cache: dict[Path, bytes] = {}


def config_dir() -> Path:
    """This installation's per-user configuration folder (not created here)."""
    explicit = os.environ.get("CINEMA_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base).expanduser() / "cinema"


def secret_path() -> Path:
    return config_dir() / "uid-secret"


def _secret() -> bytes:
    path = secret_path()
    if path in _cache:
        return _cache[path]
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        key = _create_secret(path)
    except OSError as err:
        raise InputError(f"{path}: unreadable pseudonym secret ({err}); fix its permissions or delete it") from err
    else:
        key = _parse_secret(path, text)
    _cache[path] = key
    return key


def _parse_secret(path: Path, text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise InputError(f"{path}: not a pseudonym secret (expected 64 hex digits); delete it to make a new one")
    return key


def _create_secret(path: Path) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    fresh = secrets.token_bytes(_SECRET_BYTES)
    # Written whole under a private name, then linked into place (link fails if the name exists): two processes
    # starting together end up with one secret, and nobody ever reads a half-written one.
    tmp = path.with_name(f".{path.name}-{os.getpid()}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(fresh.hex() + "\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return _parse_secret(path, path.read_text(encoding="ascii").strip())
    finally:
        tmp.unlink()
    return fresh


def pseudonymise_uid(uid: str) -> str:
    """The installation's keyed pseudonym of a UID ("uid:" + 20 hex digits); "" for an empty UID."""
    if not uid:
        return ""
    return PREFIX + hmac.new(_secret(), uid.encode(), hashlib.sha256).hexdigest()[:20]


# pydicom logs a header value it finds invalid verbatim ("Invalid value for VR UI: '1.2.840...'"), and real exams
# carry such values (UIDs with leading zeros, names with odd characters); any quoted value is dropped, and a message
# already logged once is not repeated (one per file otherwise).
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


class _RedactValues(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self._seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _QUOTED.sub("<value withheld>", message)
        if redacted in self._seen:
            return False
        if len(self._seen) < 1000:
            self._seen.add(redacted)
        record.msg, record.args = redacted, None
        return True


def redact_pydicom_log() -> None:
    """Withhold header values from pydicom's log messages (idempotent), so no UID or name reaches a log."""
    logger = logging.getLogger("pydicom")
    if not any(isinstance(f, _RedactValues) for f in logger.filters):
        logger.addFilter(_RedactValues())
