"""URLs and addresses for the crawler: normal forms, scope by domain, links in a page, and which addresses a crawl
may connect to (only public unicast ones, also when an IPv6 form embeds an IPv4 address)."""
from __future__ import annotations

import ipaddress
from urllib.parse import parse_qsl, quote, unquote, urlencode, urljoin, urlsplit, urlunsplit

import lxml.html

DEFAULT_PORTS = {"http": 80, "https": 443}


def normalize_url(url: str, base: str | None = None, sort_query: bool = False) -> str | None:
    """Absolute, canonical form: lower-case scheme and host, no default port, no fragment, '/' for an empty path.

    Returns None for what cannot be a URL at all (bad port, no host).
    """
    try:
        parts = urlsplit(urljoin(base, url.strip()) if base else url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".").lower()
    if not host:
        return None if scheme in DEFAULT_PORTS else url.strip()
    netloc = host if port in (None, DEFAULT_PORTS.get(scheme)) else f"{host}:{port}"
    if ":" in host:  # IPv6 literal
        netloc = f"[{host}]" if port in (None, DEFAULT_PORTS.get(scheme)) else f"[{host}]:{port}"
    path = urlsplit(urljoin("http://h/", parts.path)).path if "." in parts.path else parts.path  # drop ./ and ../
    path = quote(unquote(path), safe="/:@!$&'()*+,;=-._~") or "/"
    query = parts.query
    if sort_query and query:
        query = urlencode(sorted(parse_qsl(query, keep_blank_values=True)))
    return urlunsplit((scheme, netloc, path, query, ""))


def registered_domain(host: str) -> str:
    """The last two labels of a host name (example.co.uk counts as co.uk: no public-suffix list offline)."""
    if is_ip(host):
        return host
    labels = host.split(".")
    return ".".join(labels[-2:]) if len(labels) >= 2 else host


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside an IPv6 form that carries one: mapped, compatible, NAT64 or 6to4."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr in NAT64 or (addr in IPV4_COMPATIBLE and int(addr) > 1):  # ::a.b.c.d (not :: and ::1)
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def refused_address(ip: str) -> bool:
    """Anything but a public unicast address: private, loopback, link-local, shared (CGNAT), reserved, multicast,
    also when an IPv6 address embeds such an IPv4 address (::ffff:10.0.0.1, ::127.0.0.1, 64:ff9b::a9fe:a9fe,
    2002:c0a8:101::1)."""
    addr = ipaddress.ip_address(ip.split("%")[0])
    if not addr.is_global or addr.is_multicast:
        return True
    inner = embedded_ipv4(addr) if addr.version == 6 else None
    return inner is not None and (not inner.is_global or inner.is_multicast)


def extract_links(body: bytes, base_url: str) -> list[str]:
    """Absolute link targets of <a href> (and <area>, <frame>, <iframe>) in document order, honouring <base>."""
    try:
        doc = lxml.html.fromstring(body)
    except (ValueError, lxml.etree.ParserError):
        return []
    base = doc.xpath("string(//base/@href)") or base_url
    links = []
    for href in doc.xpath("//a/@href | //area/@href | //frame/@src | //iframe/@src"):
        href = str(href).strip()
        if href and not href.lower().startswith(("javascript:", "mailto:", "tel:", "data:", "#")):
            links.append(urljoin(urljoin(base_url, base), href))
    return links
