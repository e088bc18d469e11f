"""Finding binaries and ports, asking for a status, and watching processes through /proc: the
plumbing ``deploy/stack.py`` starts and stops its processes with."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import urllib.error
import urllib.request
from pathlib import Path

SYSTEM_DIRS = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def find_binary(name: str, env_var: str) -> str | None:
    """``$env_var``, else ``name`` on PATH or in the system folders (nginx lives in /usr/sbin)."""
    explicit = os.environ.get(env_var)
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which(name, path=os.environ.get("PATH", "") + ":" + SYSTEM_DIRS)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_status(url: str, timeout: float = 2.0, cafile: str | None = None) -> int | None:
    """The status ``url`` answers (an https URL checked against ``cafile``), or None if none came."""
    context = ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def group_alive(pgid: int) -> bool:
    """Whether any process of process group ``pgid`` still runs."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def worker_pids(master: int) -> set[int]:
    """PIDs whose parent is ``master``, a gunicorn master's workers (read from /proc: no psutil needed)."""
    pids = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master:
            pids.add(int(stat.parent.name))
    return pids


def tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
