"""What stands between the labelling app and the network: the Host check of a loopback server (against DNS
rebinding), the access token of any other, the request size limit, security headers, CSRF tokens and the
checks on what annotators type."""

from __future__ import annotations

import ipaddress
import re
import secrets
import unicodedata

from starlette.datastructures import URL, Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 64 * 1024
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]", "::1"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
NAME_RULE = "1–32 characters: letters, digits, '.', '_' or '-', starting with a letter or digit"
MAX_REASON = 300
HEADERS = {
    # Only this server's own script and style run: an injected <script> could not execute even if escaping failed.
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # No URL leaves for another site (the token may be in the first one); same-origin keeps the Origin header that
    # the CSRF check compares (with no-referrer, Chromium sends "Origin: null" on form posts).
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}

HEADER_BYTES = [(k.encode(), v.encode()) for k, v in HEADERS.items()]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(18)


def same(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())


def clean_name(text: str) -> str | None:
    """The annotator name if it follows NAME_RULE (after trimming spaces), else None."""
    text = text.strip()
    return text if NAME.fullmatch(text) else None


def clean_reason(text: str) -> str:
    """A free-text reason on one line, without control characters, at most MAX_REASON characters."""
    kept = "".join(" " if unicodedata.category(c).startswith("C") else c for c in text)
    return " ".join(kept.split())[:MAX_REASON]


class Guard:
    """ASGI middleware in front of every request (see the module docstring)."""

    def __init__(self, app: ASGIApp, token: str | None, loopback: bool, token_cookie: str) -> None:
        self.app, self.token, self.loopback, self.token_cookie = app, token, loopback, token_cookie

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADER_BYTES]
            await send(message)

        refusal = self.refusal(Request(scope))
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        if scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send_with_headers)
            return
        body = await read_limited(scope, receive)
        if isinstance(body, Response):
            await body(scope, receive, send_with_headers)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send_with_headers)

    def refusal(self, request: Request) -> Response | None:
        """The response that ends this request here, or None to let it through."""
        if self.loopback and (request.url.hostname or "") not in LOOPBACK_NAMES:
            return PlainTextResponse("400: this labelling server answers only to localhost / 127.0.0.1", 400)
        if self.token is None:
            return None
        given = request.query_params.get("token")
        if given is not None and same(given, self.token) and request.method == "GET":
            # Trade the token in the URL for a cookie, and drop it from the address bar.
            target = URL(str(request.url)).remove_query_params("token")
            response = RedirectResponse(target.path + (f"?{target.query}" if target.query else ""), 303)
            # Lax: a strict cookie would not come back on this very redirect when the URL was opened from a link
            # on another site (a chat, a mail page); state-changing requests need the CSRF token anyway.
            response.set_cookie(self.token_cookie, self.token, httponly=True, samesite="lax")
            return response
        if not same(request.cookies.get(self.token_cookie, ""), self.token):
            return PlainTextResponse(
                "403: this labelling server needs its access token: open the URL it printed (…/?token=…)", 403
            )
        return None


async def read_limited(scope: Scope, receive: Receive) -> bytes | Response:
    """The request body, or a 413 response once it exceeds MAX_BODY (a 400 one for a bad Content-Length)."""
    declared = Headers(scope=scope).get("content-length")
    if declared is not None:
        if not declared.isdigit():
            return PlainTextResponse("400: bad Content-Length", 400)
        if int(declared) > MAX_BODY:
            return PlainTextResponse(f"413: request bodies are limited to {MAX_BODY // 1024} KiB", 413)
    chunks: list[bytes] = []
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return PlainTextResponse("400: client went away", 400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return PlainTextResponse(f"413: request bodies are limited to {MAX_BODY // 1024} KiB", 413)
        chunks.append(chunk)
        more = message.get("more_body", False)
    return b"".join(chunks)
