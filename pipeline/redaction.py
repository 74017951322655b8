"""Credentials out of everything the pipeline writes: logs, MLflow, Hydra's output files, errors.

A URL may carry a secret in two places: its userinfo (``https://user:pass@host/...``) and its
query string (``?token=...``, pre-signed ``X-Amz-Signature=...``, ``sig=``, ``key=``). Both are
replaced wherever a URL appears in a text, so a config value, an override (``data.url=...``) or
a log line can be passed through ``redact`` as a whole.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from typing import Mapping

MASK = "***"

# URLs inside any text: scheme://... up to whitespace or a quote / bracket that ends it.
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>\]\[{}|\\^`]+")
# Query parameter names whose values are credentials (case-insensitive, matched anywhere in the
# name: access_token, X-Amz-Signature, X-Amz-Credential, api_key, client_secret, ...).
_SECRET_NAME = re.compile(r"token|sig|key|secret|pass|pwd|auth|credential|session|cookie", re.IGNORECASE)
# key=value pairs outside URLs that still name a secret (``token=abc`` in an error message)
_SECRET_PAIR = re.compile(r"(?<![A-Za-z0-9_.\-])([A-Za-z0-9_.\-]*(?:token|secret|password|passwd|signature)"
                          r"[A-Za-z0-9_\-]*)=([^\s&'\",;)]+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` without userinfo, and with the values of secret-looking query parameters masked."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # e.g. an invalid IPv6 literal: mask everything after the scheme
        return url.split("://", 1)[0] + "://" + MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = netloc.rsplit("@", 1)[1]
    query = parts.query
    if query:
        pairs = []
        for pair in query.split("&"):
            name, eq, value = pair.partition("=")
            secret = eq and _SECRET_NAME.search(urllib.parse.unquote_plus(name))
            pairs.append(f"{name}={MASK}" if secret else pair)
        query = "&".join(pairs)
    fragment = parts.fragment
    if fragment and "=" in fragment:  # OAuth implicit flow: #access_token=...
        fragment = redact_pairs(fragment.replace("&", " ")).replace(" ", "&")
    if (netloc, query, fragment) == (parts.netloc, parts.query, parts.fragment):
        return url  # nothing secret; urlunsplit would also rewrite sqlite://// paths
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query, fragment=fragment))


def redact_pairs(text: str) -> str:
    return _SECRET_PAIR.sub(lambda m: f"{m.group(1)}={MASK}", text)


def redact(text: str) -> str:
    """``text`` with every URL in it redacted (see ``redact_url``) and bare ``token=...`` pairs masked."""
    if not isinstance(text, str):
        return text
    if "://" in text:
        text = _URL.sub(lambda m: redact_url(m.group(0)), text)
    if "=" in text:
        text = redact_pairs(text)
    return text


def redacted(value):
    """``value`` (nested mappings and sequences too) with ``redact`` applied to every string."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redacted(v) for v in value]
    return value


def redact_log_records() -> None:
    """Redact every log record this process creates, whichever logger or handler it goes through
    (our messages, Hydra's, libraries'; console and Hydra's ``job.log``). Idempotent."""
    factory = logging.getLogRecordFactory()
    if getattr(factory, "redacts", False):
        return

    def make_record(*args, **kwargs) -> logging.LogRecord:
        record = factory(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error path
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    make_record.redacts = True
    logging.setLogRecordFactory(make_record)
