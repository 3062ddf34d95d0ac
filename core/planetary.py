"""Planetary Computer: reading its Azure Blob Storage assets with SAS tokens.

Planetary Computer's STAC API (:data:`STAC_URL`) gives hrefs such as
``https://sentinel2l2a01.blob.core.windows.net/sentinel2-l2/…/T06VVN_…_SCL_20m.tif``: blobs of a
storage *account* (``sentinel2l2a01``) and *container* (``sentinel2-l2``) that answer only
requests carrying a shared access signature (SAS). Its token service gives one per account
and container, anonymously (a subscription key raises the rate limit)::

    GET https://planetarycomputer.microsoft.com/api/sas/v1/token/{account}/{container}
    → {"msft:expiry": "2025-01-01T12:00:00Z", "token": "st=…&se=…&sp=rl&sv=…&sr=c&sig=…"}

and a blob is read as ``{href}?{token}`` (the format of Microsoft's planetary-computer package,
``planetary_computer/sas.py``). Here:

* **when**: items from Planetary Computer's STAC API are signed automatically
  (:func:`signing_for`); ``CLOUDPROB_SAS_TOKEN_URL`` (or ``PC_SDK_SAS_URL``, the planetary-computer
  package's name) sets another token service and then signs blob hrefs whatever catalogue gave
  them (a mirror of its catalogue, items saved to a file); ``CLOUDPROB_SAS_BLOB_HOSTS`` (patterns,
  comma-separated) sets which hosts are signed, ``*.blob.core.windows.net`` by default;
  ``PC_SDK_SUBSCRIPTION_KEY`` is sent as ``Ocp-Apim-Subscription-Key`` when set;
* **one token per (token service, account, container)** and process, fetched by the first read
  that needs it while the others wait, used until a margin before its expiry
  (:data:`REFRESH_MARGIN_S`, or a quarter of its life when that is shorter), then fetched anew;
  a blob that refuses a signed request (403) gets one more try with a new token;
* **requests** go through :mod:`core.http` (one deadline, Cancel, byte limits); a 429 answer is
  retried after its ``Retry-After`` (capped at 30 s, within the deadline);
* the signing rule (:class:`Signing`) is a small frozen value kept by the scene's catalogue
  (``core.reading.Catalogue``): it travels with a pickled href to a Dask worker, which fetches
  its own tokens. The token itself is never pickled, stored or shown in a message.

Names given by a catalogue are checked before any request: an account is 3–24 lower-case
letters and digits, a container 3–63 lower-case letters, digits and single hyphens, as Azure
allows, so a hostile href cannot steer the token request elsewhere.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qs, urlsplit

STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
TOKEN_URL = "https://planetarycomputer.microsoft.com/api/sas/v1/token"
BLOB_HOSTS = ("*.blob.core.windows.net",)
TOKEN_URL_ENV = "CLOUDPROB_SAS_TOKEN_URL"
SDK_TOKEN_URL_ENV = "PC_SDK_SAS_URL"  # the planetary-computer package's setting, honoured too
BLOB_HOSTS_ENV = "CLOUDPROB_SAS_BLOB_HOSTS"
SUBSCRIPTION_KEY_ENV = "PC_SDK_SUBSCRIPTION_KEY"
REFRESH_MARGIN_S = 300.0  # a token is replaced this long before it expires…
REFRESH_FRACTION = 0.25  # …or this share of its life before, when that is shorter
MAX_TOKEN_ANSWER = 64 * 1024  # bytes of a token service's answer (PC's: ~400)
MAX_TOKEN_CHARS = 8 * 1024

_PC_HOST = "planetarycomputer.microsoft.com"
_ACCOUNT = re.compile(r"[a-z0-9]{3,24}")
_CONTAINER = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?!-)){1,61}[a-z0-9]")
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9%&=+/:._~,;-]+")  # a URL query: no space, '#' or '?'


def is_planetary_computer(catalogue_url: str | None) -> bool:
    """Whether ``catalogue_url`` is Planetary Computer's STAC API (any version, any path in it)."""
    if not catalogue_url:
        return False
    try:
        parts = urlsplit(str(catalogue_url).strip())
    except ValueError:
        return False
    return (parts.scheme.lower() == "https" and (parts.hostname or "").lower() == _PC_HOST
            and parts.path.startswith("/api/stac/"))


def configured_token_url() -> str | None:
    """The token service the user set (``CLOUDPROB_SAS_TOKEN_URL``, else ``PC_SDK_SAS_URL``), or None."""
    for name in (TOKEN_URL_ENV, SDK_TOKEN_URL_ENV):
        value = os.environ.get(name, "").strip()
        if value:
            return value.rstrip("/")
    return None


def configured_blob_hosts() -> tuple[str, ...]:
    """Host patterns whose hrefs are signed (``CLOUDPROB_SAS_BLOB_HOSTS``, comma-separated;
    ``host`` or ``host:port``, ``*`` wildcards), :data:`BLOB_HOSTS` by default."""
    value = os.environ.get(BLOB_HOSTS_ENV, "")
    hosts = tuple(h.strip().lower() for h in value.split(",") if h.strip())
    return hosts or BLOB_HOSTS


def signing_for(catalogue_url: str | None) -> "Signing | None":
    """How assets of the catalogue at ``catalogue_url`` are signed: with the token service the
    user set, for any catalogue; else with Planetary Computer's, for its own STAC API; else None."""
    configured = configured_token_url()
    if configured:
        return Signing(configured, configured_blob_hosts())
    if is_planetary_computer(catalogue_url):
        return Signing(TOKEN_URL, configured_blob_hosts())
    return None


def is_signed(url: str) -> bool:
    """Whether ``url`` already carries a shared access signature (``sig=`` in its query)."""
    try:
        return "sig" in parse_qs(urlsplit(url).query)
    except ValueError:
        return False


def redact(text: str) -> str:
    """``text`` with every SAS signature (``sig=…``) blanked: for messages that might quote a
    signed URL (GDAL's)."""
    return re.sub(r"(?i)([?&]sig=)[^&\s'\"<>]+", r"\1(hidden)", text)


def _error(message: str):
    from .http import TransportError

    return TransportError(message, "signing")


@dataclass(frozen=True)
class Signing:
    """Blob hrefs on ``blob_hosts`` are signed with tokens from ``token_url``
    (``{token_url}/{account}/{container}``). Hashable and picklable: it holds no token."""

    token_url: str
    blob_hosts: tuple[str, ...] = BLOB_HOSTS

    def applies(self, url: str) -> bool:
        """Whether ``url`` is an http(s) href on one of :attr:`blob_hosts` and not signed yet
        (an href signed by whoever made the item is read as it is)."""
        text = str(url)
        if not text.lower().startswith(("http://", "https://")):
            return False
        try:
            parts = urlsplit(text)
            host = (parts.hostname or "").lower()
            netloc = parts.netloc.rsplit("@", 1)[-1].lower()
        except ValueError:
            return False
        if not any(fnmatch.fnmatchcase(host, p) or fnmatch.fnmatchcase(netloc, p) for p in self.blob_hosts):
            return False
        return not is_signed(text)

    def container_of(self, url: str) -> tuple[str, str]:
        """(account, container) of a blob href: ``https://{account}.blob.core.windows.net/{container}/…``
        or, on other hosts (the storage emulator's way), ``http://host/{account}/{container}/…``.
        Raises :class:`~core.http.TransportError` (``signing``) for names Azure would not allow."""
        parts = urlsplit(str(url))
        host = (parts.hostname or "").lower()
        segments = [s for s in parts.path.split("/") if s]
        if host.endswith(".blob.core.windows.net"):
            account, container = host.split(".", 1)[0], (segments[0] if segments else "")
            rest = segments[1:]
        else:
            account = segments[0] if segments else ""
            container = segments[1] if len(segments) > 1 else ""
            rest = segments[2:]
        if not _ACCOUNT.fullmatch(account) or not _CONTAINER.fullmatch(container) or not rest:
            raise _error(f"{url}: not an Azure blob address (storage account/container/blob) that can be signed")
        return account, container

    def sign(self, url: str, deadline: float | None = None) -> str:
        """``url`` with the current token of its container appended; fetched (or refreshed) first
        when needed, before ``deadline`` (``time.monotonic()``). Raises
        :class:`~core.http.TransportError` (``signing``) naming ``url`` and the token service, or
        :class:`~core.progress.Cancelled`."""
        account, container = self.container_of(url)
        token = _token(self.token_url, account, container, deadline, url)
        return f"{url}{'&' if urlsplit(url).query else '?'}{token.value}"

    def invalidate(self, url: str) -> None:
        """Forget the token of ``url``'s container (a blob refused it): the next request fetches one."""
        try:
            account, container = self.container_of(url)
        except Exception:
            return
        with _GUARD:
            _TOKENS.pop((self.token_url, account, container), None)

    def describe(self) -> str:
        return f"the SAS token service at {self.token_url}"


# ---------------------------------------------------------------------------------------------
# Tokens, one per (token service, account, container) and process


@dataclass(frozen=True)
class Token:
    """A SAS token: its query ``value``, the service's ``expiry`` and when (``time.monotonic()``)
    it is replaced."""

    value: str
    expiry: datetime
    refresh_at: float
    life_s: float

    def __repr__(self) -> str:  # never shown
        return f"Token(expiry={self.expiry.isoformat()}, life_s={self.life_s:.1f})"


_TOKENS: dict[tuple[str, str, str], Token] = {}
_LOCKS: dict[tuple[str, str, str], threading.Lock] = {}
_GUARD = threading.Lock()


def clear_tokens() -> None:
    """Forget every token of this process."""
    with _GUARD:
        _TOKENS.clear()


def cached_token(token_url: str, account: str, container: str) -> Token | None:
    """The token this process holds for a container (None if none)."""
    with _GUARD:
        return _TOKENS.get((token_url.rstrip("/"), account, container))


def _token(token_url: str, account: str, container: str, deadline: float | None, href: str) -> Token:
    from . import http
    from .progress import Cancelled

    key = (token_url.rstrip("/"), account, container)
    with _GUARD:
        token = _TOKENS.get(key)
        if token is not None and time.monotonic() < token.refresh_at:
            return token
        lock = _LOCKS.setdefault(key, threading.Lock())
    owner = http.current_owner()
    # one thread fetches; the others wait for its token (Cancel and the deadline still apply)
    while not lock.acquire(timeout=http.WATCH_INTERVAL_S):
        if owner is not None and owner.is_canceled():
            raise Cancelled("cancelled by the user")
        if deadline is not None and time.monotonic() >= deadline:
            raise _error(f"{href}: no SAS token from {token_url} within {http.timeout_s():g} s")
    try:
        with _GUARD:
            token = _TOKENS.get(key)
        if token is not None and time.monotonic() < token.refresh_at:
            return token
        token = fetch_token(key[0], account, container, deadline, href)
        with _GUARD:
            _TOKENS[key] = token
        return token
    finally:
        lock.release()


def fetch_token(token_url: str, account: str, container: str, deadline: float | None = None,
                href: str | None = None) -> Token:
    """A new token from ``{token_url}/{account}/{container}``. Its life is counted from the
    service's own clock (its ``Date`` header, less a second for that header's resolution) when it
    gives one, so a wrong clock here does not make a valid token look expired or the reverse.
    Raises :class:`~core.http.TransportError` (``signing``) naming ``href`` and the service."""
    from . import http

    url = f"{token_url.rstrip('/')}/{account}/{container}"
    what = f"{href}: no SAS token for {account}/{container} from {url}" if href else f"no SAS token from {url}"
    headers = {"Accept": "application/json"}
    key = os.environ.get(SUBSCRIPTION_KEY_ENV, "").strip()
    if key:
        headers["Ocp-Apim-Subscription-Key"] = key
    try:
        response = http.get(url, headers, limit=MAX_TOKEN_ANSWER, deadline=deadline)
    except http.TransportError as exc:
        raise _error(f"{what}: {exc}") from None
    received = time.monotonic()
    if response.status != 200:
        hint = ""
        if response.status == 429:
            hint = (" (the service limits how often tokens are asked for, and asked to wait longer than this "
                    f"request could; a Planetary Computer subscription key in {SUBSCRIPTION_KEY_ENV} raises the limit)")
        elif response.status in (401, 403, 404):
            hint = " (the service gives no token for this storage container)"
        raise _error(f"{what}: HTTP {response.status} {response.reason}".rstrip() + hint)
    try:
        answer = json.loads(response.body.decode("utf-8"))
        value, expiry_text = answer["token"], answer["msft:expiry"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError):
        raise _error(f"{what}: its answer is not a token (JSON with 'token' and 'msft:expiry')") from None
    if not isinstance(value, str) or not value or len(value) > MAX_TOKEN_CHARS or not _TOKEN_CHARS.fullmatch(value):
        raise _error(f"{what}: its 'token' is not a URL query")
    try:
        from .dates import parse_datetime

        expiry = parse_datetime(str(expiry_text))
    except (ValueError, TypeError):
        raise _error(f"{what}: its 'msft:expiry' ({str(expiry_text)[:40]!r}) is not a date and time") from None
    now, slack = datetime.now(timezone.utc), 0.0
    served = response.headers.get("date")
    if served:
        try:
            now, slack = parsedate_to_datetime(served).astimezone(timezone.utc), 1.0
        except (TypeError, ValueError, IndexError):
            pass
    life = (expiry - now).total_seconds() - slack
    if life <= 0:
        raise _error(f"{what}: the token it gave expired at {expiry.isoformat()}, before it arrived "
                     f"(the service's time: {now.isoformat()})")
    margin = min(REFRESH_MARGIN_S, REFRESH_FRACTION * life)
    return Token(value, expiry, received + life - margin, life)
