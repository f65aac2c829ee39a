"""What `slidenet serve` refuses before a request reaches a route, each refusal as JSON.

`Guard` is one ASGI middleware around the app:

- the Host check: a server bound to loopback answers only requests addressed to a loopback
  name, so a page elsewhere cannot reach it through a name it points at 127.0.0.1 (DNS
  rebinding); 400. IPv6 literals (`[::1]:8000`) are read too.
- a URL longer than MAX_URL bytes: 414 (the HTTP layer reads heads up to `limits.MAX_HEAD`, so the
  answer arrives instead of a reset connection).
- a cross-site request to `/api/...`: a page on another site can make the browser POST to
  127.0.0.1 (a form, or fetch in no-cors mode) and so make the server decode and compute; such
  a request carries `Sec-Fetch-Site: cross-site` (or `same-site`), or an `Origin` that is not
  the server's own; 403. The page itself (`/`, `/static/`) may be linked to from anywhere.
"""
import json
from urllib.parse import urlsplit

from slidenet.storage.limits import MAX_URL

SAME = ("same-origin", "none")      # Sec-Fetch-Site values of the page itself, or a typed URL


def host_name(host):
    """'localhost:8000' -> 'localhost'; '[::1]:8000' -> '::1'; lower case."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware: the Host check (`trusted_hosts`, None: any), the URL's length, and
    cross-site requests to /api/, each refused with a JSON {"error": ...}."""

    def __init__(self, app, trusted_hosts=None):
        self.app = app
        self.trusted = None if trusted_hosts is None else {host_name(h) for h in trusted_hosts}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self.refusal(scope)
        if refusal is None:
            return await self.app(scope, receive, send)
        status, message = refusal
        body = json.dumps({"error": message}).encode("utf-8")
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def refusal(self, scope):
        """(status, message) for a request to refuse, else None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        host = headers.get("host", "")
        if self.trusted is not None and host_name(host) not in self.trusted:
            return 400, (f"this server answers requests for {', '.join(sorted(self.trusted))}, "
                         f"not {host[:100]!r}")
        length = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"")
        if length > MAX_URL:
            return 414, (f"the URL is {length:,} bytes long; this server's URLs are at most "
                         f"{MAX_URL:,}")
        if not scope.get("path", "").startswith("/api/"):
            return None
        site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        if site is not None and site not in SAME:
            return 403, (f"a request from another site (Sec-Fetch-Site: {site[:40]}) is "
                         "refused: only this server's own page may use its API")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return 403, (f"a request from another origin ({origin[:100]}) is refused: only "
                         "this server's own page may use its API")
        return None
