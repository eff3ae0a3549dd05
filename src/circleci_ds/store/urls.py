"""Database URLs: which schemes are supported, how a URL is shown, which parts are secret.

Rules:
- `display_url` is the only way a database URL is shown (errors, `status`, logs). It keeps the URL
  as written except for credentials: the userinfo password, and the value of every query parameter
  whose name holds `pass`, `secret` or `token` (`password`, `sslpassword`, `passfile`, …), which
  become `***`.
- Only SQLite and PostgreSQL are supported; any other scheme is refused before a driver is loaded.
- `postgresql://` means psycopg 3 (SQLAlchemy alone would pick psycopg2).
"""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote, urlsplit

MASK = "***"
_SECRET_PARAM_WORDS = ("pass", "secret", "token")
_POSTGRES_PREFIXES = ("postgresql://", "postgres://", "postgresql+psycopg://")
SUPPORTED = "sqlite:///FILE or postgresql://USER@HOST/DB"


class UnsupportedURL(ValueError):
    """Not a database URL circleci-ds can use; the message is safe to show."""


def is_secret_param(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_PARAM_WORDS)


def display_url(url: str) -> str:
    """The URL as written, with its credentials masked."""
    if "://" not in url:
        return url if "@" not in url else "<unparsable database URL>"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable database URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{host}"
    query = "&".join(_mask_param(pair) for pair in parts.query.split("&")) if parts.query else ""
    shown = f"{parts.scheme}://{netloc}{parts.path}"
    if query:
        shown += f"?{query}"
    if parts.fragment:
        shown += f"#{parts.fragment}"
    return shown


def _mask_param(pair: str) -> str:
    name, sep, _value = pair.partition("=")
    return f"{name}={MASK}" if sep and is_secret_param(unquote(name)) else pair


def secrets_in(url: str) -> list[str]:
    """The URL's secret values (raw and decoded), so that log and error text can be masked too."""
    found: list[str] = []
    try:
        parts = urlsplit(url)
    except ValueError:
        return found
    userinfo = parts.netloc.rsplit("@", 1)[0] if "@" in parts.netloc else ""
    if ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    found += [value for name, value in parse_qsl(parts.query) if is_secret_param(name)]
    found += [unquote(s) for s in found]
    return [s for s in dict.fromkeys(found) if s]


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def engine_url(url: str) -> str:
    """The SQLAlchemy URL for a supported database URL; UnsupportedURL otherwise."""
    scheme = scheme_of(url)
    if scheme == "sqlite":
        return url
    for prefix in _POSTGRES_PREFIXES:
        if url.lower().startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    if not scheme:
        raise UnsupportedURL(f"not a database URL: {display_url(url)} (expected {SUPPORTED})")
    raise UnsupportedURL(
        f"unsupported database scheme {scheme.split('+')[0]!r} in {display_url(url)} "
        f"(circleci-ds stores into {SUPPORTED})"
    )
