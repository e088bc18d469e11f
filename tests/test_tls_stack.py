"""nginx in front over TLS (#38, item 3): the template's HTTPS server, its redirect and HSTS.

The fast test reads the rendered config. The slow one starts ``deploy/stack.py`` on loopback
(Redis, one gunicorn instance on the fixture model, nginx with a self-signed certificate made
by ``openssl``) and checks, as a client: the certificate verifies against that file (and not
without it), TLS below 1.2 is refused, plain HTTP redirects to the same path over HTTPS, and
HTTPS answers carry one HSTS header and a Secure, SameSite=Lax session cookie.
"""

from __future__ import annotations

import http.client
import re
import shutil
import socket
import ssl

import pytest
import requests

from deploy import nginx
from deploy.processes import find_binary
from deploy.stack import Stack
from tests.conftest import image_bytes


def test_the_template_serves_https_only_with_modern_protocols_and_hsts(tmp_path):
    stack = Stack(tmp_path, port=8080, tls_port=8443, certificate=nginx.Certificate("/etc/tls/chain.pem", "/etc/tls/key.pem"))
    conf = stack.write_nginx_conf().read_text()
    assert "listen 127.0.0.1:8443 ssl;" in conf
    assert "ssl_certificate /etc/tls/chain.pem;" in conf and "ssl_certificate_key /etc/tls/key.pem;" in conf
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in conf and "TLSv1.1" not in conf and "SSLv3" not in conf
    assert 'add_header Strict-Transport-Security "max-age=31536000" always;' in conf
    plain = conf[conf.index("listen 127.0.0.1:8080;"):]
    assert plain.split("}", 1)[0].strip().endswith("return 301 https://$host:8443$request_uri;")
    assert "${" not in conf


@pytest.fixture(scope="module")
def tls_stack(model_path, tmp_path_factory):
    missing = [n for n, v in (("nginx", "NGINX"), ("redis-server", "REDIS_SERVER")) if not find_binary(n, v)]
    if missing or not shutil.which("openssl"):
        pytest.skip(f"{' and '.join(missing) or 'openssl'} not installed (make services installs nginx and redis)")
    running = Stack(tmp_path_factory.mktemp("tls") / "run", instances=1, model_path=str(model_path)).start()
    yield running
    running.stop()


def handshake(port: int, context: ssl.SSLContext) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            return tls.version()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")  # asked for on purpose
def test_https_with_a_checked_certificate_a_redirect_and_hsts(tls_stack):
    chain = tls_stack.certificate.chain
    trusted = ssl.create_default_context(cafile=chain)
    assert handshake(tls_stack.tls_port, trusted) in ("TLSv1.2", "TLSv1.3")
    with pytest.raises(ssl.SSLCertVerificationError):  # the client really checks: unknown without the file
        handshake(tls_stack.tls_port, ssl.create_default_context())
    old = ssl.create_default_context(cafile=chain)
    old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError):
        handshake(tls_stack.tls_port, old)

    plain = http.client.HTTPConnection("127.0.0.1", tls_stack.port, timeout=10)
    plain.request("GET", "/docs?x=1")
    moved = plain.getresponse()
    assert moved.status == 301
    assert moved.getheader("Location") == f"https://127.0.0.1:{tls_stack.tls_port}/docs?x=1"
    assert moved.getheader("Strict-Transport-Security") is None  # browsers ignore it over HTTP
    plain.close()

    page = requests.get(tls_stack.url + "/", verify=chain, timeout=30)
    assert page.status_code == 200
    assert page.raw.headers.getlist("Strict-Transport-Security") == ["max-age=31536000"]  # nginx's, not doubled
    cookie = page.raw.headers["Set-Cookie"].lower()
    assert cookie.startswith("session=") and "secure" in cookie and "samesite=lax" in cookie and "httponly" in cookie
    ready = requests.get(tls_stack.url + "/readyz", verify=chain, timeout=30)
    assert ready.status_code == 200 and ready.headers["Strict-Transport-Security"] == "max-age=31536000"


@pytest.mark.slow
def test_a_browser_session_screens_and_downloads_its_report_over_https(tls_stack):
    """The whole form flow through nginx's TLS side: the Secure cookie carries the CSRF secret and the
    report binding, so the report downloads in this session and not in another."""
    chain = tls_stack.certificate.chain
    browser = requests.Session()
    browser.headers["Referer"] = tls_stack.url + "/"  # as a browser sends it (Referrer-Policy: same-origin)
    form = browser.get(tls_stack.url + "/", verify=chain, timeout=30).text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    page = browser.post(tls_stack.url + "/screen", data={"csrf_token": csrf, "age": "70"}, verify=chain, timeout=60,
                        files={"image": ("lesion.png", image_bytes((220, 30, 30)), "image/png")})
    assert page.status_code == 200, page.text[:300]
    assert all(c.secure for c in browser.cookies)  # the Secure flag came back over HTTPS
    token = re.search(r'name="token" value="([^"]+)"', page.text).group(1)
    report = browser.post(tls_stack.url + "/report/txt", data={"token": token}, verify=chain, timeout=30)
    assert report.status_code == 200 and "age 70" in report.text
    stranger = requests.post(tls_stack.url + "/report/txt", data={"token": token}, verify=chain, timeout=30)
    assert stranger.status_code == 400
