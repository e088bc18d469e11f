"""nginx's config for the stack, from ``nginx.conf.template``, and the TLS certificate it serves.

The template is the recipe for real hosts too: plain HTTP redirects to HTTPS, which serves
TLS 1.2 and 1.3 only, with HSTS, from the certificate whose paths are its settings. On
loopback the stack makes a self-signed certificate with ``openssl`` (for 127.0.0.1 and
localhost, valid 30 days); clients check the service against that certificate file.
"""

from __future__ import annotations

import math
import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

from server.config import DEFAULT_RATE_LIMITS, active_rate

TEMPLATE = Path(__file__).with_name("nginx.conf.template")
TEMP_DIRS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")


@dataclass(frozen=True)
class Certificate:
    """Where nginx finds its certificate chain and key (both PEM)."""

    chain: str
    key: str


def self_signed_certificate(folder: Path, host: str = "127.0.0.1", openssl: str = "openssl") -> Certificate:
    """A fresh self-signed certificate for ``host`` and localhost, made by ``openssl`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    chain, key = folder / "tls-certificate.pem", folder / "tls-key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "30", "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host},DNS:localhost",
                    "-keyout", str(key), "-out", str(chain)], check=True, capture_output=True, timeout=60)
    key.chmod(0o600)
    return Certificate(str(chain), str(key))


def _group(gid: int) -> str:
    import grp

    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_line() -> str:
    """As root, nginx's workers would otherwise become `nobody`, who cannot write the run folder."""
    if os.geteuid() != 0:
        return "# not root: nginx runs as this user"
    user = pwd.getpwuid(os.geteuid())
    return f"user {user.pw_name} {Path('/etc/group').exists() and _group(user.pw_gid) or user.pw_name};"


# Uploads from one address that go straight through at once before nginx paces the rest: a
# clinician sending three views of one lesion never waits. Kept small because N addresses can
# put N x (PACED_AFTER + 1) screenings in front of everyone else's at the same moment.
PACED_AFTER = 2
# Uploads one address may have beyond its rate at once: PACED_AFTER of them straight through, the
# rest waiting their turn. Each waiting request holds a connection (nginx counts it against no
# other limit while it waits), so few may wait: 64 addresses to fill worker_connections.
MAX_BURST = 10
# Requests one address may have in progress at nginx, slow uploads included (a browser opens
# about 6 connections; a clinic's staff behind one address share this).
MAX_IN_PROGRESS = 16


@dataclass(frozen=True)
class OuterLimit:
    """nginx's per-address pacing of screening: ``per_minute`` a minute, up to ``burst`` waiting."""

    per_minute: int
    burst: int

    @property
    def retry_after(self) -> int:
        """Seconds until the bucket has room for one more request."""
        return max(1, math.ceil(60 / self.per_minute))


def outer_rate_limit(rate: str | None) -> OuterLimit | None:
    """nginx's pacing in front of the service's ``RATE_LIMIT`` (e.g. "60/minute"), or None when it is off.

    The service's own (loosest) rate, as a leaky bucket: ``PACED_AFTER`` uploads at once go
    straight through, up to ``MAX_BURST`` (or the whole budget, if smaller) are held by nginx and
    passed on at that rate, and past that nginx answers 429 itself. A small batch is slowed, not
    refused; a flood from a few addresses reaches the workers at one request a second each instead
    of taking every worker for as long as its budget lasts, and costs nginx, not Python, to hold.
    """
    rate = active_rate(rate)
    if rate is None:
        return None
    from limits import parse_many

    loosest = max(parse_many(rate), key=lambda item: item.amount / item.get_expiry())
    return OuterLimit(per_minute=math.ceil(loosest.amount * 60 / loosest.get_expiry()),
                      burst=min(loosest.amount, MAX_BURST))


def _limit_directives(limit: OuterLimit | None) -> dict[str, str]:
    if limit is None:
        off = "# RATE_LIMIT is off: no per-address limit here either"
        return {"screening_limit_zone": off, "screening_limit": off, "screening_rate": "off", "screening_retry_after": "1"}
    return {
        "screening_limit_zone": f"limit_req_zone $screening_client zone=screening:1m rate={limit.per_minute}r/m;",
        "screening_limit": f"limit_req zone=screening burst={limit.burst} delay={PACED_AFTER};",
        "screening_rate": f"{limit.per_minute} a minute, {limit.burst} waiting",
        "screening_retry_after": str(limit.retry_after),
    }


def render(run_dir: Path, host: str, port: int, tls_port: int, upstreams: list[str], certificate: Certificate,
           rate_limit: str | None = None) -> str:
    """The template filled in: HTTP on ``port`` (redirects), HTTPS on ``tls_port``, the body limit from
    MAX_UPLOAD_MB, the flood guard from the hosts' ``rate_limit`` (None: RATE_LIMIT, else the default)."""
    max_mb = int(os.environ.get("MAX_UPLOAD_MB", "10"))
    rate = (os.environ.get("RATE_LIMIT", "") if rate_limit is None else rate_limit).strip() or DEFAULT_RATE_LIMITS["RATE_LIMIT"]
    servers = "\n".join(f"        server {address} max_fails=1 fail_timeout=10s;" for address in upstreams)
    return Template(TEMPLATE.read_text()).safe_substitute(
        user_line=user_line(), run_dir=str(run_dir), listen=f"{host}:{port}", tls_listen=f"{host}:{tls_port}",
        https_port_suffix="" if tls_port == 443 else f":{tls_port}",
        tls_certificate=certificate.chain, tls_certificate_key=certificate.key, upstream_servers=servers,
        max_upload_mb=str(max_mb), max_body_bytes=str(max_mb * 1024 * 1024 + 64 * 1024),
        upload_read_timeout=str(int(float(os.environ.get("UPLOAD_READ_TIMEOUT", "10")))),
        proxy_read_timeout=str(int(os.environ.get("GUNICORN_TIMEOUT", "30")) + 30),
        max_in_progress=str(MAX_IN_PROGRESS), **_limit_directives(outer_rate_limit(rate)),
    )


def write_conf(run_dir: Path, text: str) -> Path:
    for sub in TEMP_DIRS:
        (run_dir / sub).mkdir(exist_ok=True)
    conf = run_dir / "nginx.conf"
    conf.write_text(text)
    return conf
