"""nginx's config for the stack, from ``nginx.conf.template``, and the TLS certificate it serves.

The template is the recipe for real hosts too: plain HTTP redirects to HTTPS, which serves
TLS 1.2 and 1.3 only, with HSTS, from the certificate whose paths are its settings. On
loopback the stack makes a self-signed certificate with ``openssl`` (for 127.0.0.1 and
localhost, valid 30 days); clients check the service against that certificate file.
"""

from __future__ import annotations

import os
import pwd
import subprocess
from dataclasses import dataclass
from pathlib import Path
from string import Template

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


def render(run_dir: Path, host: str, port: int, tls_port: int, upstreams: list[str], certificate: Certificate) -> str:
    """The template filled in: HTTP on ``port`` (redirects), HTTPS on ``tls_port``, the body limit from MAX_UPLOAD_MB."""
    max_mb = int(os.environ.get("MAX_UPLOAD_MB", "10"))
    servers = "\n".join(f"        server {address} max_fails=1 fail_timeout=10s;" for address in upstreams)
    return Template(TEMPLATE.read_text()).safe_substitute(
        user_line=user_line(), run_dir=str(run_dir), listen=f"{host}:{port}", tls_listen=f"{host}:{tls_port}",
        https_port_suffix="" if tls_port == 443 else f":{tls_port}",
        tls_certificate=certificate.chain, tls_certificate_key=certificate.key, upstream_servers=servers,
        max_upload_mb=str(max_mb), max_body_bytes=str(max_mb * 1024 * 1024 + 64 * 1024),
        upload_read_timeout=str(int(float(os.environ.get("UPLOAD_READ_TIMEOUT", "10")))),
        proxy_read_timeout=str(int(os.environ.get("GUNICORN_TIMEOUT", "30")) + 30),
    )


def write_conf(run_dir: Path, text: str) -> Path:
    for sub in TEMP_DIRS:
        (run_dir / sub).mkdir(exist_ok=True)
    conf = run_dir / "nginx.conf"
    conf.write_text(text)
    return conf
