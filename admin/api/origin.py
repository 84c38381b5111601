"""Insecure development mode answers this machine's own programs, never a web page from elsewhere.

``GRAFT_INSECURE_DEV`` turns authentication off and is refused unless the admin listens on loopback
(admin/settings.py). Listening on loopback keeps other machines out, but not the developer's browser: any page it
visits can send requests to ``127.0.0.1`` (a cross-site form post or ``fetch``), and a DNS-rebinding page can
point its own name at ``127.0.0.1`` and read the answers. So in that mode every request must also be addressed to
this machine and come from this machine's own pages, as Django's ``ALLOWED_HOSTS`` and CSRF origin check and the
Fetch Metadata resource-isolation policy (OWASP) have it:

* the ``Host`` header must name a loopback address or ``localhost`` (a rebinding page's requests carry its own
  name): otherwise a 400;
* a request the browser marks as coming from another site (``Sec-Fetch-Site: cross-site`` or ``same-site``: another
  port of localhost is another origin) is a 403, except a plain navigation to a page (a link, a bookmark);
* a request that can change something (not GET, HEAD or OPTIONS) with an ``Origin`` must come from the same origin
  as the request is addressed to (``null`` and other hosts or ports are a 403).

Programs (curl, scripts, the tests) send neither ``Origin`` nor ``Sec-Fetch-*`` and are answered as before.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from urllib.parse import urlsplit

from graft.core.errors import DisallowedHostError, PermissionDeniedError

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
_FOREIGN_SITES = ("cross-site", "same-site")


def _host_port(value: str) -> tuple[str, str]:
    """``host[:port]`` split, IPv6 brackets removed, lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = value.partition(":")
    return host, port


def is_loopback_name(host: str) -> bool:
    if host in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_local_request(method: str, headers: Mapping[str, str], scheme: str = "http") -> None:
    """Raise unless the request is addressed to this machine and comes from none of another site's pages."""
    host_header = headers.get("host")
    if host_header is not None and not is_loopback_name(_host_port(host_header)[0]):
        raise DisallowedHostError(
            f"Host {host_header[:100]!r} is not this machine: without authentication (insecure_dev) the admin answers "
            "only requests addressed to localhost, 127.0.0.1 or [::1]"
        )
    site = headers.get("sec-fetch-site", "").lower()
    navigation = method in ("GET", "HEAD") and headers.get("sec-fetch-mode", "").lower() == "navigate"
    if site in _FOREIGN_SITES and not navigation:
        raise PermissionDeniedError(
            f"a {site} request from a web page: without authentication (insecure_dev) the admin answers only its own "
            "pages and programs on this machine"
        )
    origin = headers.get("origin")
    if method in SAFE_METHODS or origin is None:
        return
    default = {"http": "80", "https": "443"}
    try:
        parts = urlsplit(origin.strip().lower())
        origin_at = (parts.hostname or "", str(parts.port or default.get(parts.scheme, "")))
    except ValueError:  # a port that is not a number
        origin_at = ("", "")
    host, port = _host_port(host_header or "")
    if origin_at != (host, port or default.get(scheme, "")):  # "null" has no host: refused too
        raise PermissionDeniedError(
            f"Origin {origin[:100]!r} is not this admin's: without authentication (insecure_dev) changes are accepted "
            "only from its own pages and programs on this machine"
        )
