"""Text out of archived payloads: the charset of an HTML body, binary bodies told apart, WARC dates parsed.

    text, charset, fell_back = decode_html(body, charset_of(content_type))
"""
from __future__ import annotations

import codecs
import re
from datetime import datetime, timezone

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def decode_html(body: bytes, declared: str | None) -> tuple[str, str, bool]:
    """Decode by BOM, then the declared charset, then a <meta> charset, then UTF-8; (text, charset, fell_back)."""
    for bom, name in ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16")):
        if body.startswith(bom):
            return body.decode(name, errors="replace"), name, False
    meta = _META_CHARSET.search(body[:4096])
    for name in (declared, meta.group(1).decode("ascii", "ignore") if meta else None, "utf-8"):
        if not name:
            continue
        try:
            codec = codecs.lookup(name).name
            return body.decode(codec), codec, False
        except (LookupError, UnicodeDecodeError):
            continue
    return body.decode("cp1252", errors="replace"), "cp1252", True


_CONTROL = bytes(b for b in range(32) if b not in (9, 10, 12, 13)) + b"\x7f"


def looks_binary(body: bytes) -> bool:
    """True for bytes that are no text in any charset: many NULs or control bytes in the first 4 KiB."""
    if body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    sample = body[:4096]
    if not sample:
        return False
    controls = len(sample) - len(sample.translate(None, _CONTROL))
    return sample.count(0) > 16 or controls / len(sample) > 0.05


def charset_of(content_type: str | None) -> str | None:
    if not content_type:
        return None
    m = re.search(r"charset\s*=\s*[\"']?([^\s;\"']+)", content_type, re.I)
    return m.group(1) if m else None


def fetch_time(value: str | None) -> datetime | None:
    if not value or value.lower() == "null":
        return None
    try:
        if value.isdigit() and len(value) == 14:
            return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc)
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except ValueError:
        return None
