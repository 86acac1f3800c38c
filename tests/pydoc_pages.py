"""Real HTML that every machine can make offline, for tests: Python's own pydoc pages, archived as a WARC file.

Each page becomes a WARC 1.1 response record for http://localhost/<module>.html.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import os
import pydoc
import sys
import tempfile
import uuid
import warnings
from datetime import datetime, timezone
from pathlib import Path

from warcio.statusandheaders import StatusAndHeaders
from warcio.warcwriter import WARCWriter

# Modules whose import has side effects (opening a browser, printing, starting Tk) or is slow.
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__hello__", "__phello__",
        "ensurepip", "venv", "lib2to3", "pydoc_data", "xxlimited", "xxlimited_35", "xxsubtype", "msilib",
        "winreg", "winsound", "_winapi", "msvcrt", "nt", "crypt", "nis", "ossaudiodev", "spwd", "sre_compile",
        "sre_constants", "sre_parse", "asynchat", "asyncore", "imp", "smtpd", "distutils", "tty", "pty"}


def module_names(limit: int) -> list[str]:
    names = sorted(n for n in sys.stdlib_module_names if not n.startswith("_") and n not in SKIP)
    return names[:limit]


def render(name: str) -> str | None:
    """pydoc's HTML page for one module, or None when the module does not import here."""
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            module = importlib.import_module(name)
            return pydoc.html.page(pydoc.describe(module), pydoc.html.document(module, name))
    except Exception:
        return None


def write_pydoc_warc(path: str | Path, pages: int = 300) -> Path:
    """Write (atomically) a WARC of up to ``pages`` pydoc pages; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    written = 0
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = WARCWriter(fh, gzip=True, warc_version="WARC/1.1")
            for name in module_names(len(sys.stdlib_module_names)):
                if written >= pages:
                    break
                html = render(name)
                if html is None:
                    continue
                url = f"http://localhost/{name}.html"
                body = html.encode("utf-8")
                headers = StatusAndHeaders("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                                                      ("Content-Length", str(len(body)))], protocol="HTTP/1.0")
                record_id = f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url + hashlib.sha1(body).hexdigest())}>"
                record = writer.create_warc_record(url, "response", payload=io.BytesIO(body), http_headers=headers,
                                                   warc_headers_dict={"WARC-Date": now, "WARC-Record-ID": record_id})
                writer.write_record(record)
                written += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

