"""Web-config files: what loads, what is refused (in one line), and basic auth."""

from __future__ import annotations

import base64
import os
import ssl
from pathlib import Path

import bcrypt
import pytest

from celery_prom.config import ConfigError
from celery_prom.webconfig import BasicAuth, WebConfigFile, load_web_config
from tests.certs import Pki, make_pki

HASH = bcrypt.hashpw(b"s3cret-Sentinel", bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "web.yml"
    path.write_text(text)
    return str(path)


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_an_empty_file_means_plain_http_without_auth(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, ""))

    assert (config.ssl_context, config.requires_auth, dict(config.headers)) == (None, False, {})


def test_tls_with_client_certificates(tmp_path: Path, pki: Pki) -> None:
    config = load_web_config(
        write(
            tmp_path,
            f"""
tls_server_config:
  cert_file: {pki.server_cert}
  key_file: {pki.server_key}
  client_auth_type: RequireAndVerifyClientCert
  client_ca_file: {pki.ca}
  min_version: TLS13
""",
        )
    )

    assert config.ssl_context is not None
    assert config.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1_3


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, pki: Pki) -> None:
    (tmp_path / "tls").mkdir()
    os.link(pki.server_cert, tmp_path / "tls" / "cert.pem")
    os.link(pki.server_key, tmp_path / "tls" / "key.pem")

    config = load_web_config(
        write(tmp_path, "tls_server_config:\n  cert_file: tls/cert.pem\n  key_file: tls/key.pem\n")
    )

    assert config.ssl_context is not None


def test_inline_certificate_and_key(tmp_path: Path, pki: Pki) -> None:
    cert = pki.server_cert.read_text().replace("\n", "\n    ")
    key = pki.server_key.read_text().replace("\n", "\n    ")

    config = load_web_config(
        write(tmp_path, f"tls_server_config:\n  cert: |\n    {cert}\n  key: |\n    {key}\n")
    )

    assert config.ssl_context is not None


def test_headers_and_users(tmp_path: Path) -> None:
    config = load_web_config(
        write(
            tmp_path,
            f"""
basic_auth_users:
  prometheus: {HASH}
http_server_config:
  http2: true
  headers:
    X-Frame-Options: deny
""",
        )
    )

    assert config.requires_auth
    assert dict(config.headers) == {"X-Frame-Options": "deny"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config: [", "not valid YAML (line 1)"),
        ("- a list", "the file must be a mapping"),
        ("rate_limit: {burst: 1}", "rate_limit is not supported by celery-prom"),
        ("tls_server_config: {cert_file: a.pem}", "tls_server_config needs cert_file and key_file"),
        (
            "tls_server_config:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]",
            "tls_server_config.cipher_suites is not supported by celery-prom",
        ),
        (
            "http_server_config: {rate: 1}",
            "http_server_config.rate is not supported by celery-prom",
        ),
        (
            "basic_auth_users: {alice: s3cret-Sentinel}",
            "basic_auth_users: the password of 'alice' is not a bcrypt hash",
        ),
        ("basic_auth_users: [alice]", "basic_auth_users must be a mapping"),
    ],
)
def test_bad_files_are_refused_in_one_line_without_secrets(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as error:
        load_web_config(path)

    assert str(error.value) == f"web config {path}: {message}"
    assert "s3cret-Sentinel" not in str(error.value)


@pytest.mark.parametrize(
    ("tls", "message"),
    [
        (
            "client_auth_type: RequireAnyClientCert",
            "client_auth_type 'RequireAnyClientCert' is not supported (use one of NoClientCert, "
            "VerifyClientCertIfGiven, RequireAndVerifyClientCert)",
        ),
        (
            "client_auth_type: RequireAndVerifyClientCert",
            "client_auth_type RequireAndVerifyClientCert needs client_ca_file",
        ),
        ("min_version: TLS9", "min_version 'TLS9' is not one of TLS10, TLS11, TLS12, TLS13"),
        (
            "client_ca_file: /nonexistent/ca.pem",
            "client_ca_file /nonexistent/ca.pem: No such file or directory",
        ),
    ],
)
def test_bad_tls_settings(tmp_path: Path, pki: Pki, tls: str, message: str) -> None:
    path = write(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n"
        f"  key_file: {pki.server_key}\n  {tls}\n",
    )

    with pytest.raises(ConfigError) as error:
        load_web_config(path)

    assert str(error.value) == f"web config {path}: {message}"


def test_a_key_that_does_not_match_the_certificate(tmp_path: Path, pki: Pki) -> None:
    path = write(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki.server_cert}\n  key_file: {pki.client_key}\n",
    )

    with pytest.raises(ConfigError, match=r"cannot load cert_file .* with key_file"):
        load_web_config(path)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as error:
        load_web_config(str(tmp_path / "nope.yml"))

    assert str(error.value) == f"web config {tmp_path / 'nope.yml'}: No such file or directory"


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (basic("prometheus", "s3cret-Sentinel"), True),
        (basic("prometheus", "wrong"), False),
        (basic("mallory", "s3cret-Sentinel"), False),
        (basic("prometheus", "s3cret-Sentinel" + "x" * 100), False),
        ("Bearer abc", False),
        ("Basic !!!", False),
        ("Basic " + base64.b64encode(b"no-colon").decode(), False),
        (None, False),
    ],
)
def test_basic_auth(tmp_path: Path, header: str | None, allowed: bool) -> None:
    config = load_web_config(write(tmp_path, f"basic_auth_users:\n  prometheus: {HASH}\n"))
    auth = BasicAuth()

    assert auth.allows(config, header) is allowed
    assert auth.allows(config, header) is allowed  # the second answer comes from the cache


def test_a_changed_password_is_not_served_from_the_cache(tmp_path: Path) -> None:
    path = write(tmp_path, f"basic_auth_users:\n  prometheus: {HASH}\n")
    auth = BasicAuth()
    assert auth.allows(load_web_config(path), basic("prometheus", "s3cret-Sentinel"))

    new_hash = bcrypt.hashpw(b"rotated", bcrypt.gensalt(rounds=4)).decode()
    rotated = load_web_config(write(tmp_path, f"basic_auth_users:\n  prometheus: {new_hash}\n"))

    assert not auth.allows(rotated, basic("prometheus", "s3cret-Sentinel"))
    assert auth.allows(rotated, basic("prometheus", "rotated"))


def test_the_file_is_reloaded_when_it_changes_and_a_broken_edit_is_ignored(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "")
    watched = WebConfigFile(path)
    assert not watched.current().requires_auth

    Path(path).write_text(f"basic_auth_users:\n  prometheus: {HASH}\n")
    os.utime(path, (1, 1))
    watched._checked = 0.0  # skip the once-a-second throttle instead of waiting for it
    assert watched.current().requires_auth

    Path(path).write_text("basic_auth_users: [")
    os.utime(path, (2, 2))
    watched._checked = 0.0
    assert watched.current().requires_auth
