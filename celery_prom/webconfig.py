"""TLS and basic authentication for the endpoints, from a Prometheus web-config file.

The file format is the one Prometheus and its exporters use (``--web.config.file``), so a
team's existing file works unchanged for the parts celery-prom supports; anything else is
refused at start with a one-line error rather than silently ignored. Like Prometheus, the
file is re-read when it changes, so rotated certificates and passwords apply without a
restart; a file that became invalid keeps the last good configuration in force.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import ssl
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import bcrypt
import yaml

from celery_prom.config import ConfigError

logger = logging.getLogger(__name__)

_TLS_VERSIONS: Mapping[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}
# Go's client_auth_type names. The two that ask for a certificate without verifying it give
# no security Python's ssl module can express, so they are refused with a pointer instead.
_CLIENT_AUTH: Mapping[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_TLS_KEYS = frozenset(
    {
        "cert_file",
        "key_file",
        "cert",
        "key",
        "client_auth_type",
        "client_ca_file",
        "min_version",
        "max_version",
        "prefer_server_cipher_suites",
    }
)
_TOP_KEYS = frozenset({"tls_server_config", "basic_auth_users", "http_server_config"})
_HTTP_KEYS = frozenset({"headers", "http2"})
#: How often at most the file's modification time is checked.
_RELOAD_CHECK_INTERVAL = 1.0
#: Verified credentials remembered (as keyed hashes), so each scrape does not pay bcrypt.
_AUTH_CACHE_SIZE = 64


@dataclass(frozen=True)
class WebConfig:
    """One loaded web-config file."""

    ssl_context: ssl.SSLContext | None = None
    users: Mapping[str, bytes] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def requires_auth(self) -> bool:
        return bool(self.users)


def load_web_config(path: str) -> WebConfig:
    """Parse and validate ``path``; every problem is a one-line ``ConfigError``."""
    try:
        with open(path, encoding="utf-8") as stream:
            document = yaml.safe_load(stream)
    except OSError as exc:
        raise ConfigError(f"web config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"web config {path}: not valid YAML{where}") from None
    if document is None:
        return WebConfig()
    try:
        return _web_config(_mapping(document, "the file"), os.path.dirname(path))
    except ConfigError as exc:
        raise ConfigError(f"web config {path}: {exc}") from None


class WebConfigFile:
    """A web-config file, reloaded when it changes; readers always get a valid config."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._config = load_web_config(path)
        self._mtime = _mtime(path)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def current(self) -> WebConfig:
        now = time.monotonic()
        if now - self._checked < _RELOAD_CHECK_INTERVAL:
            return self._config
        with self._lock:
            self._checked = now
            mtime = _mtime(self.path)
            if mtime != self._mtime:
                self._mtime = mtime
                self._reload()
        return self._config

    def _reload(self) -> None:
        try:
            self._config = load_web_config(self.path)
            logger.info("celery-prom: reloaded web config %s", self.path)
        except ConfigError as exc:
            logger.error("celery-prom: keeping the previous web config: %s", exc)


class BasicAuth:
    """Checks ``Authorization`` headers against bcrypt hashes, in constant time per user."""

    def __init__(self) -> None:
        self._key = os.urandom(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        # A valid hash to check unknown user names against, so they cost what known ones
        # do; made on first need, as bcrypt is slow by design and most endpoints use no auth.
        self._unknown_user_hash: bytes | None = None

    def allows(self, config: WebConfig, authorization: str | None) -> bool:
        if not config.requires_auth:
            return True
        credentials = _basic_credentials(authorization)
        if credentials is None:
            return False
        user, password = credentials
        stored = config.users.get(user)
        # The cache key covers the stored hash too, so a changed password invalidates it.
        token = hmac.new(
            self._key, b"\0".join([user.encode(), password, stored or b""]), hashlib.sha256
        ).digest()
        with self._lock:
            if token in self._verified:
                self._verified.move_to_end(token)
                return True
        if not _password_matches(password, stored or self._hash_for_unknown_users()) or not stored:
            return False
        with self._lock:
            self._verified[token] = None
            while len(self._verified) > _AUTH_CACHE_SIZE:
                self._verified.popitem(last=False)
        return True

    def _hash_for_unknown_users(self) -> bytes:
        if self._unknown_user_hash is None:
            self._unknown_user_hash = bcrypt.hashpw(b"celery-prom", bcrypt.gensalt(rounds=10))
        return self._unknown_user_hash


def _password_matches(password: bytes, hashed: bytes) -> bool:
    try:
        return bool(bcrypt.checkpw(password, hashed))
    except ValueError:  # longer than bcrypt's 72 bytes: never a valid password
        return False


def _basic_credentials(authorization: str | None) -> tuple[str, bytes] | None:
    if not authorization:
        return None
    scheme, _, encoded = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, separator, password = decoded.partition(b":")
    if not separator:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def _web_config(document: Mapping[str, Any], base: str) -> WebConfig:
    _refuse_unknown(document, _TOP_KEYS, "")
    tls = document.get("tls_server_config")
    http = _mapping(document.get("http_server_config") or {}, "http_server_config")
    _refuse_unknown(http, _HTTP_KEYS, "http_server_config.")
    return WebConfig(
        ssl_context=None if tls is None else _ssl_context(_mapping(tls, "tls_server_config"), base),
        users=_users(document.get("basic_auth_users") or {}),
        headers=_headers(http.get("headers") or {}),
    )


def _ssl_context(tls: Mapping[str, Any], base: str) -> ssl.SSLContext:
    _refuse_unknown(tls, _TLS_KEYS, "tls_server_config.")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _tls_version(tls, "min_version", "TLS12")
    if "max_version" in tls:
        context.maximum_version = _tls_version(tls, "max_version", "TLS13")
    _load_certificate(context, tls, base)
    auth_type = _string(tls.get("client_auth_type", "NoClientCert"), "client_auth_type")
    if auth_type not in _CLIENT_AUTH:
        supported = ", ".join(_CLIENT_AUTH)
        raise ConfigError(
            f"client_auth_type {auth_type!r} is not supported (use one of {supported})"
        )
    context.verify_mode = _CLIENT_AUTH[auth_type]
    ca_file = tls.get("client_ca_file")
    if ca_file is not None:
        path = _path(ca_file, base, "client_ca_file")
        try:
            context.load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"client_ca_file {path}: {_reason(exc)}") from None
    elif context.verify_mode != ssl.CERT_NONE:
        raise ConfigError(f"client_auth_type {auth_type} needs client_ca_file")
    return context


def _load_certificate(context: ssl.SSLContext, tls: Mapping[str, Any], base: str) -> None:
    if "cert" in tls or "key" in tls:
        if "cert_file" in tls or "key_file" in tls:
            raise ConfigError("give either cert/key or cert_file/key_file, not both")
        _load_inline_certificate(
            context, _string(tls.get("cert"), "cert"), _string(tls.get("key"), "key")
        )
        return
    if "cert_file" not in tls or "key_file" not in tls:
        raise ConfigError("tls_server_config needs cert_file and key_file")
    cert = _path(tls["cert_file"], base, "cert_file")
    key = _path(tls["key_file"], base, "key_file")
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load cert_file {cert} with key_file {key}: {_reason(exc)}"
        ) from None


def _load_inline_certificate(context: ssl.SSLContext, cert: str, key: str) -> None:
    # The ssl module only reads certificates from files: write them to private temp files.
    with tempfile.TemporaryDirectory(prefix="celery-prom-tls-") as directory:
        cert_path = os.path.join(directory, "cert.pem")
        key_path = os.path.join(directory, "key.pem")
        for path, content in ((cert_path, cert), (key_path, key)):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
                stream.write(content)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise ConfigError(f"cannot load the inline cert and key: {_reason(exc)}") from None


def _users(value: Any) -> dict[str, bytes]:
    users = {}
    for user, hashed in _mapping(value, "basic_auth_users").items():
        if not isinstance(user, str) or not isinstance(hashed, str):
            raise ConfigError("basic_auth_users maps user names to bcrypt hashes")
        encoded = hashed.encode("utf-8")
        try:
            bcrypt.checkpw(b"", encoded)
        except ValueError:
            raise ConfigError(
                f"basic_auth_users: the password of {user!r} is not a bcrypt hash"
            ) from None
        users[user] = encoded
    return users


def _headers(value: Any) -> dict[str, str]:
    headers = {}
    for name, content in _mapping(value, "http_server_config.headers").items():
        if not isinstance(name, str) or not isinstance(content, str) or "\n" in content:
            raise ConfigError("http_server_config.headers maps header names to one-line values")
        headers[name] = content
    return headers


def _tls_version(tls: Mapping[str, Any], key: str, default: str) -> ssl.TLSVersion:
    name = _string(tls.get(key, default), key)
    if name not in _TLS_VERSIONS:
        raise ConfigError(f"{key} {name!r} is not one of {', '.join(_TLS_VERSIONS)}")
    return _TLS_VERSIONS[name]


def _refuse_unknown(section: Mapping[str, Any], known: frozenset[str], prefix: str) -> None:
    unknown = sorted(str(key) for key in section if key not in known)
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]} is not supported by celery-prom")


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{what} must be a mapping")
    return value


def _string(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty string")
    return value


def _path(value: Any, base: str, what: str) -> str:
    # Relative paths are relative to the web-config file, as in Prometheus.
    return os.path.join(base, _string(value, what))


def _reason(exc: OSError | ssl.SSLError) -> str:
    return str(getattr(exc, "reason", None) or exc.strerror or type(exc).__name__)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None
