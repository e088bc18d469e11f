"""Cookie flags and HSTS (#38, item 3): the session cookie (it carries the CSRF secret and the
report binding) is SameSite=Lax always and Secure whenever the page was served over HTTPS,
directly or behind a trusted proxy that says so; HSTS is sent on HTTPS answers only."""

from __future__ import annotations

import pytest

from server import create_app


def app_client(model_path, hops: int = 0):
    """No cookie jar: every request starts a session, so every answer sets the cookie."""
    return create_app({"MODEL_PATH": str(model_path), "TESTING": True, "SECRET_KEY": "cookie-secret",
                       "TRUSTED_PROXY_HOPS": hops, "RATE_LIMIT": "off"}).test_client(use_cookies=False)


def session_cookie(resp) -> str:
    cookies = [v for k, v in resp.headers.items() if k.lower() == "set-cookie" and v.startswith("session=")]
    assert len(cookies) == 1, resp.headers
    return cookies[0]


def flags(cookie: str) -> set[str]:
    return {part.strip().lower() for part in cookie.split(";")[1:]}


@pytest.fixture(scope="module")
def plain(model_path):
    return app_client(model_path)


@pytest.fixture(scope="module")
def proxied(model_path):
    return app_client(model_path, hops=1)


def test_over_http_the_cookie_is_samesite_lax_httponly_and_not_secure(plain):
    resp = plain.get("/")  # the upload form puts its CSRF secret in the session
    assert {"httponly", "samesite=lax", "path=/"} <= flags(session_cookie(resp))
    assert "secure" not in flags(session_cookie(resp))
    assert "Strict-Transport-Security" not in resp.headers


def test_over_https_the_cookie_is_secure_and_hsts_is_sent(plain):
    resp = plain.get("/", base_url="https://localhost")
    assert {"secure", "httponly", "samesite=lax"} <= flags(session_cookie(resp))
    assert resp.headers["Strict-Transport-Security"].startswith("max-age=")
    assert int(resp.headers["Strict-Transport-Security"].split("=")[1].split(";")[0]) >= 180 * 24 * 3600


def test_behind_a_trusted_proxy_that_says_https_the_cookie_is_secure(proxied):
    resp = proxied.get("/", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "10.0.0.7"})
    assert {"secure", "samesite=lax"} <= flags(session_cookie(resp))
    assert "Strict-Transport-Security" in resp.headers


def test_a_client_claiming_https_without_a_trusted_proxy_changes_nothing(plain):
    resp = plain.get("/", headers={"X-Forwarded-Proto": "https"})
    assert "secure" not in flags(session_cookie(resp)) and "samesite=lax" in flags(session_cookie(resp))
    assert "Strict-Transport-Security" not in resp.headers
