"""`<data_dir>/admin.key`: the first admin key, for the tools on the same machine (`simulate`,
the benchmarks, the README's curl commands) to find without being told."""

from __future__ import annotations

import os
from pathlib import Path

FILE_NAME = "admin.key"


def write(data_dir: Path, key: str) -> Path:
    """Write `key` to the data directory's key file, readable by this user only (0600, also
    when the file existed with wider rights)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / FILE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)
    return path


def read(data_dir: Path) -> str | None:
    """The key in the data directory's key file, if there is one."""
    try:
        text = (data_dir / FILE_NAME).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return text or None


def find(explicit: str | None, data_dir: Path) -> str | None:
    """The key a client sends: the one given (`--api-key`, or ENERGY_API_KEY), else the
    admin key file's, else none (a server with authentication off)."""
    if explicit:
        return explicit.strip()
    from_env = os.environ.get("ENERGY_API_KEY", "").strip()
    return from_env or read(data_dir)


def headers(key: str | None) -> dict[str, str]:
    """The request headers that carry `key` (none without a key)."""
    return {"Authorization": f"Bearer {key}"} if key else {}
