"""A small web site served on 127.0.0.1 for crawler tests: robots rules, redirects, failures, big and binary files."""
from __future__ import annotations

import threading
import time
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def html(title: str, links: list[str] = (), extra: str = "") -> bytes:
    anchors = "".join(f'<li><a href="{href}">{href}</a></li>' for href in links)
    return (f"<html><head><title>{title}</title></head><body><h1>{title}</h1>"
            f"<p>Some text about {title} for the crawler tests.</p><ul>{anchors}</ul>{extra}</body></html>").encode()


class LocalSite:
    """Serve the routes below; ``requests`` logs (path, headers, monotonic time) of every request received."""

    LAST_MODIFIED = formatdate(1_700_000_000, usegmt=True)

    def __init__(self, private_links: list[str] = (), crawl_delay: float | None = None,
                 robots: str = "rules") -> None:
        self.crawl_delay = crawl_delay
        self.robots = robots  # rules | redirect (to /robots-real.txt) | loop (redirects forever) | huge (100 MB)
        self.requests: list[tuple[str, dict[str, str], float]] = []
        self.changing = "first version"
        self.flaky_hits = 0
        self.private_links = list(private_links)
        site = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                site.requests.append((self.path, dict(self.headers), time.monotonic()))
                try:
                    site.route(self)
                except (BrokenPipeError, ConnectionResetError):  # the crawler hung up on a big or slow answer
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "LocalSite":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def paths(self) -> list[str]:
        return [p for p, _, _ in self.requests]

    @staticmethod
    def send(h, status: int, body: bytes = b"", ctype: str = "text/html; charset=utf-8", headers=()) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def route(self, h) -> None:
        path = h.path
        rules = f"User-agent: *\nDisallow: /private\n{f'Crawl-delay: {self.crawl_delay}' if self.crawl_delay else ''}\n"
        if path == "/robots.txt" and self.robots == "redirect":
            return self.send(h, 301, headers=[("Location", "/robots-real.txt")])
        if path.startswith("/robots.txt") and self.robots == "loop":
            return self.send(h, 302, headers=[("Location", f"/robots.txt?{len(path)}")])
        if path == "/robots.txt" and self.robots == "huge":  # 100 MB: the rules, then comment lines
            h.send_response(200)
            h.send_header("Content-Type", "text/plain")
            h.send_header("Content-Length", str(100 * 2**20))
            h.end_headers()
            h.wfile.write(rules.encode().ljust(2**20, b"#"))
            for _ in range(99):
                h.wfile.write(b"#" * 2**20)
            return None
        if path in ("/robots.txt", "/robots-real.txt"):
            return self.send(h, 200, rules.encode(), "text/plain")
        if path in ("/bomb.br", "/bomb.gz", "/bomb.gzgz"):
            from tests import bombs

            body, encoding = {"/bomb.br": (bombs.brotli_bomb, "br"), "/bomb.gz": (bombs.gzip_bomb, "gzip"),
                              "/bomb.gzgz": (bombs.double_gzip_bomb, "gzip, gzip")}[path]
            return self.send(h, 200, body(), headers=[("Content-Encoding", encoding)])
        if path == "/trickle":  # slowloris: one byte every 0.5 s, never finishing within any sane deadline
            h.send_response(200)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", "10000")
            h.end_headers()
            for _ in range(10000):
                h.wfile.write(b"<")
                h.wfile.flush()
                time.sleep(0.5)
            return None
        if path == "/":
            links = ["/a", "/b", "/a#section", "/private/secret", "/r1", "/loop1", "/slow", "/flaky", "/missing",
                     "/big", "/file.bin", "/image.png", "/fake.html", "/changing", "mailto:someone@example.com",
                     "file:///etc/passwd", *self.private_links]
            return self.send(h, 200, html("Home", links))
        if path == "/a":
            if h.headers.get("If-None-Match") == '"a1"':
                return self.send(h, 304, headers=[("ETag", '"a1"')])
            return self.send(h, 200, html("Page A", ["/", "/deep/1"]), headers=[("ETag", '"a1"')])
        if path == "/b":
            if h.headers.get("If-Modified-Since") == self.LAST_MODIFIED:
                return self.send(h, 304)
            return self.send(h, 200, html("Page B"), headers=[("Last-Modified", self.LAST_MODIFIED)])
        if path.startswith("/deep/"):
            n = int(path.rsplit("/", 1)[1])
            return self.send(h, 200, html(f"Deep {n}", [f"/deep/{n + 1}"]))
        if path in ("/r1", "/r2"):
            target = "/r2" if path == "/r1" else "/a"
            return self.send(h, 302 if path == "/r1" else 301, headers=[("Location", target)])
        if path == "/to-private":
            return self.send(h, 302, headers=[("Location", "http://10.9.8.7/admin")])
        if path in ("/loop1", "/loop2"):
            return self.send(h, 302, headers=[("Location", "/loop2" if path == "/loop1" else "/loop1")])
        if path == "/slow":
            time.sleep(1.5)
            return self.send(h, 200, html("Slow"))
        if path == "/flaky":
            self.flaky_hits += 1
            if self.flaky_hits == 1:
                return self.send(h, 500, b"try again")
            return self.send(h, 200, html("Flaky but fine"))
        if path == "/big":
            return self.send(h, 200, html("Big", extra="<p>" + "x" * 200_000 + "</p>"))
        if path == "/file.bin":
            return self.send(h, 200, bytes(range(256)) * 10, "application/octet-stream")
        if path == "/fake.html":  # binary bytes that claim to be HTML
            return self.send(h, 200, b"<html>" + bytes(range(256)) * 40)
        if path == "/image.png":
            return self.send(h, 200, b"\x89PNG\r\n\x1a\n" + bytes(100), "image/png")
        if path == "/changing":
            return self.send(h, 200, html("Changing", extra=f"<p>{self.changing}</p>"))
        return self.send(h, 404, b"<html>not found</html>")


class FileServer:
    """Serve the files under ``root`` over HTTP/1.1 on 127.0.0.1 as a CDN or S3 does: HEAD, GET, ``Range: bytes=N-``
    (206), ETag and Content-Length. ``cut`` maps a path to a byte count: the first GET of that path sends the full
    Content-Length, then that many bytes, then resets the connection (as a dropped connection does mid-file; what
    reaches the client before the reset varies), or with ``how = "close"`` closes it cleanly there (a short body).
    ``requests`` logs (method, path, Range header)."""

    def __init__(self, root, cut: dict[str, int] | None = None, ranges: bool = True, how: str = "reset",
                 last_modified: dict[str, str | None] | None = None) -> None:
        import hashlib
        import socket
        import struct
        from pathlib import Path

        self.root = Path(root)
        self.cut = dict(cut or {})
        self.requests: list[tuple[str, str, str | None]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self.answer(body=False)

            def do_GET(self):
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                rel = self.path.split("?", 1)[0].lstrip("/")
                server.requests.append((self.command, "/" + rel, self.headers.get("Range")))
                path = server.root / rel
                if not rel or not path.is_file():
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = path.read_bytes()
                start = 0
                wanted = self.headers.get("Range")
                if ranges and wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
                    start = int(wanted[len("bytes="):-1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("ETag", '"' + hashlib.md5(data).hexdigest() + '"')
                sent = (last_modified or {}).get("/" + rel, formatdate(path.stat().st_mtime, usegmt=True))
                if sent is not None:  # a path mapped to None gets no Last-Modified; to a string, that string
                    self.send_header("Last-Modified", sent)
                self.send_header("Accept-Ranges", "bytes" if ranges else "none")
                self.end_headers()
                if not body:
                    return
                cut = server.cut.pop("/" + rel, None) if self.command == "GET" else None
                if cut is not None and start < cut:
                    self.wfile.write(data[start:cut])
                    self.wfile.flush()
                    if how == "reset":  # SO_LINGER 0: close sends RST, not FIN
                        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    else:
                        self.connection.shutdown(socket.SHUT_WR)
                    self.connection.close()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
