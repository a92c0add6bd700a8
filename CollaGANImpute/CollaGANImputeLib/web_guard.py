"""Who may drive a ``collagan-impute web`` server, and what a client may change.

The server under the page (trame -> wslink -> aiohttp) accepts any ``Origin`` and ``Host`` and a fixed, public
secret; a page on any other site the user opens could then connect to it and drive it. :class:`Guard` adds:

- a ``Host`` check on every request: only this machine's names for the served port and the hosts of the origins the
  user allows (``--allow-origin``); a DNS-rebinding page, whose host is the attacker's name, is refused;
- an ``Origin`` check: a request from a page carries its origin, which must be the served one (the page's own
  ``Host``) or an allowed one; the WebSocket and every non-GET request must carry it;
- a per-server random secret, handed to the served page by the session endpoint trame's page asks first
  (``POST paraview/``, same-origin only: another origin can neither pass the checks above nor read the reply);
- server-owned state: client updates to the keys the server alone writes (the SYNTHETIC banner, node labels,
  status, scores, ...) are dropped and the server's values sent back;
- a cap on one WebSocket message, so an upload larger than the limits is refused before it is allocated.

Example:
    >>> guard = Guard(allowed_origins=["https://collagan.example.org"])
    >>> guard.origin_allowed("http://127.0.0.1:8080", "127.0.0.1:8080", 8080)
    True
    >>> guard.origin_allowed("http://evil.test", "127.0.0.1:8080", 8080)
    False
"""

from __future__ import annotations

import hmac
import secrets
import sys
from typing import Iterable
from urllib.parse import urlsplit

from .errors import InputError

SESSION_PATH = "/paraview/"  # where trame's page asks for its session before it connects
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` in lower case, or InputError for anything else.

    >>> normalize_origin("HTTPS://Proxy.Example.org/")
    'https://proxy.example.org'
    """
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise InputError(f"--allow-origin '{origin}' is not an origin; give it as scheme://host[:port], e.g. "
                         "https://collagan.example.org.")
    return f"{parts.scheme}://{parts.netloc}".lower()


class Guard:
    """The checks above for one server bound to ``host`` (see the module's docstring)."""

    def __init__(self, host: str = "127.0.0.1", allowed_origins: Iterable[str] = (), owned_keys: Iterable[str] = (),
                 max_message_bytes: int = 0) -> None:
        self.secret = secrets.token_urlsafe(32)
        self.allowed_origins = {normalize_origin(o) for o in allowed_origins}
        self.names = set(LOCAL_NAMES)
        if host not in ("0.0.0.0", "::", ""):
            self.names.add((f"[{host}]" if ":" in host else host).lower())
        self.proxy_hosts = {urlsplit(o).netloc for o in self.allowed_origins}
        self.owned_keys = frozenset(owned_keys)
        self.max_message_bytes = max_message_bytes

    def host_allowed(self, host: str, port: int) -> bool:
        """``host`` (a Host header) names this machine on the served ``port``, or an allowed origin's host."""
        host = host.lower()
        if host in self.proxy_hosts:
            return True
        name, _, given = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not name:
            name, given = host, ("80" if port == 80 else "")
        return name in self.names and given == str(port)

    def origin_allowed(self, origin: str, host: str, port: int) -> bool:
        """True for the page served under ``host`` (when that host is allowed) and for the allowed origins."""
        origin = (origin or "").lower()
        if origin in self.allowed_origins:
            return True
        return self.host_allowed(host, port) and origin in (f"http://{host}".lower(), f"https://{host}".lower())

    def refusal(self, method: str, headers, port: int) -> str:
        """Why a request to the server listening on ``port`` is refused ('' when it is allowed)."""
        host, origin = headers.get("Host", ""), headers.get("Origin")
        if not self.host_allowed(host, port):
            return (f"Host '{host}' is not this server's; open the page at http://127.0.0.1:{port}/ or start the "
                    "server with --allow-origin for the address you use.")
        websocket = headers.get("Upgrade", "").lower() == "websocket"
        if origin is None and (websocket or method not in ("GET", "HEAD")):
            return "Requests that drive the server must come from its page (no Origin header)."
        if origin is not None and not self.origin_allowed(origin, host, port):
            return (f"Origin '{origin}' may not use this server; only its own page may (add a reverse proxy's "
                    "address with --allow-origin).")
        return ""

    # --- wiring into the wslink server (trame's on_server_bind) ---------------------------------------------

    def bind(self, wslink_server) -> None:
        """Install the checks on wslink's aiohttp server, before it starts (its app is not frozen yet)."""
        from aiohttp import web

        @web.middleware
        async def check(request, handler):
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            reason = self.refusal(request.method, request.headers, sockname[1] if sockname else -1)
            if reason:
                if request.method != "GET" or "Upgrade" in request.headers:  # who tried to drive it: for the log
                    print(f"Refused a request to {request.path}: {reason}", file=sys.stderr, flush=True)
                return web.Response(status=403, text=reason)
            return await handler(request)

        async def session(request):
            # The page connects back to the address it was served from (trame replaces USE_HOST by it).
            return web.json_response({"sessionURL": "ws://USE_HOST/ws", "secret": self.secret})

        wslink_server.app.middlewares.append(check)
        wslink_server.app.router.add_post(SESSION_PATH, session)
        for handler in getattr(wslink_server, "_ws_handlers", []):
            self._guard_handler(handler)

    def _guard_handler(self, handler) -> None:
        handler.serverProtocol.updateSecret(self.secret)

        async def validate(token, client_id) -> bool:
            return isinstance(token, str) and hmac.compare_digest(token.encode(), self.secret.encode())

        handler.validateToken = validate

        if self.max_message_bytes:
            hello = handler.handleSystemMessage

            async def capped_hello(rpcid, method, args, client_id):
                handled = await hello(rpcid, method, args, client_id)
                if client_id in handler.unchunkers and handler.isClientAuthenticated(client_id):
                    handler.unchunkers[client_id].set_max_message_size(self.max_message_bytes)
                return handled

            handler.handleSystemMessage = capped_hello

        if self.owned_keys and "trame.state.update" in handler.functionMap:
            protocol, update = handler.functionMap["trame.state.update"]
            owned = self.owned_keys

            def guarded_update(protocol, changes):
                kept = [c for c in changes if isinstance(c, dict) and c.get("key") not in owned]
                refused = [c.get("key") for c in changes if isinstance(c, dict) and c.get("key") in owned]
                result = update(protocol, kept)
                if refused:  # the sender's page shows the server's values again
                    protocol.force_push_state(*refused)
                return result

            handler.functionMap["trame.state.update"] = (protocol, guarded_update)
