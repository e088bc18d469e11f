"""The nginx config ``deploy/`` writes: bodies limited to what Flask accepts, each address paced at the
service's own rate limit, requests in progress capped per address, and nginx itself accepting it."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from deploy import nginx
from deploy.nginx import MAX_BURST, MAX_IN_PROGRESS, PACED_AFTER
from deploy.stack import Stack, find_binary


def test_nginx_config_limits_bodies_to_what_flask_accepts(tmp_path, monkeypatch):
    monkeypatch.setenv("MAX_UPLOAD_MB", "7")
    stack = Stack(tmp_path, port=8080)
    conf = stack.write_nginx_conf().read_text()
    flask_limit = 7 * 1024 * 1024 + 64 * 1024  # server/config.py's MAX_CONTENT_LENGTH
    assert f"client_max_body_size {flask_limit};" in conf and f"client_body_buffer_size {flask_limit};" in conf
    assert "proxy_request_buffering on;" in conf and "proxy_max_temp_file_size 0;" in conf
    assert "${" not in conf


@pytest.mark.parametrize("rate, zone, burst", [("60/minute", "rate=60r/m", f"burst={MAX_BURST}"),
                                               ("5/second;100/hour", "rate=300r/m", "burst=5"),
                                               ("off", None, None)])
def test_nginx_paces_each_address_at_the_services_own_limit(tmp_path, monkeypatch, rate, zone, burst):
    monkeypatch.setenv("RATE_LIMIT", rate)
    binary, openssl = find_binary("nginx", "NGINX"), shutil.which("openssl")
    certificate = nginx.self_signed_certificate(tmp_path / "tls") if openssl else nginx.Certificate("c.pem", "k.pem")
    path = nginx.write_conf(tmp_path, nginx.render(tmp_path, "127.0.0.1", 8080, 8443, ["127.0.0.1:9"], certificate))
    conf = path.read_text()
    if zone is None:
        assert "limit_req " not in conf and "limit_req_zone " not in conf
    else:
        assert f"limit_req_zone $screening_client zone=screening:1m {zone};" in conf
        guarded = conf[conf.index("location ~ ^/(predict|screen)$"):]
        assert guarded.split("}", 1)[0].split("{", 1)[1].split() == [
            "limit_req", "zone=screening", burst, f"delay={PACED_AFTER};", "proxy_pass", "http://screening;"]
    assert f"limit_conn per_address {MAX_IN_PROGRESS};" in conf  # whatever the rate: held requests are capped
    if binary and openssl:  # nginx itself accepts the config
        checked = subprocess.run([binary, "-t", "-p", str(tmp_path), "-c", str(path), "-e", str(tmp_path / "error.log")],
                                 capture_output=True, text=True, timeout=30)
        assert checked.returncode == 0, checked.stderr
