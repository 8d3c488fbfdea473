"""The labelling web app (Starlette): one server-rendered page per judgment, a little JavaScript for the keys.

Routes: ``GET /`` (the name form, the next item, or "done"), ``POST /annotator``, ``POST /judge``, ``POST /undo``,
and the fixed files of ``static/`` (read into memory at start: no URL reaches the file system). Every POST carries
the CSRF token of its page; a judgment is on disk before the redirect to the next page is sent.
"""

from __future__ import annotations

import secrets
from importlib import resources
from urllib.parse import parse_qs

from jinja2 import Environment, PackageLoader
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from lmgym.label.security import NAME_RULE, Guard, clean_name, clean_reason, same
from lmgym.label.session import CHOICES, LabelSession

STATIC_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8"}
MESSAGES = {"undone": "Your last judgment was undone: judge this item again."}


def static_files() -> dict[str, tuple[bytes, str]]:
    """name → (content, media type) of the package's static folder."""
    folder = resources.files("lmgym.label") / "static"
    out = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if suffix in STATIC_TYPES:
            out[entry.name] = (entry.read_bytes(), STATIC_TYPES[suffix])
    return out


def create_app(session: LabelSession, port: int, token: str | None, loopback: bool) -> Starlette:
    """The app for ``session``; cookies are named after ``port`` so that two servers on one host stay apart."""
    env = Environment(loader=PackageLoader("lmgym.label", "templates"), autoescape=True)
    cookie = {name: f"lmgym{port}_{name}" for name in ("token", "annotator", "csrf")}

    def render(request: Request, template: str, status: int = 200, **context) -> HTMLResponse:
        csrf = request.cookies.get(cookie["csrf"], "")
        fresh = len(csrf) < 32
        csrf = secrets.token_urlsafe(32) if fresh else csrf
        html = env.get_template(template).render(csrf=csrf, blind=session.blind_eval, **context)
        response = HTMLResponse(html, status)
        if fresh:
            response.set_cookie(cookie["csrf"], csrf, httponly=True, samesite="strict")
        return response

    def annotator_of(request: Request) -> str | None:
        return clean_name(request.cookies.get(cookie["annotator"], ""))  # a tampered cookie asks for the name again

    async def form_of(request: Request) -> dict[str, str] | Response:
        """The urlencoded form of a POST, or the refusal of a request without this page's CSRF token."""
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
            return PlainTextResponse("403: cross-origin request", 403)
        try:
            fields = parse_qs((await request.body()).decode(), max_num_fields=20, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return PlainTextResponse("400: a form must be urlencoded UTF-8", 400)
        form = {k: v[0] for k, v in fields.items()}
        expected = request.cookies.get(cookie["csrf"], "")
        if len(expected) < 32 or not same(form.get("csrf", ""), expected):
            return PlainTextResponse("403: missing or wrong CSRF token; reload the page", 403)
        return form

    async def page(request: Request) -> Response:
        annotator = annotator_of(request)
        if annotator is None:
            return render(request, "name.html", rule=NAME_RULE)
        item = session.current(annotator)
        progress = session.progress(annotator)
        if item is None:
            return render(request, "done.html", annotator=annotator, progress=progress,
                          waiting=session.remaining(annotator), last=session.store.last(annotator))  # fmt: skip
        left, right = (item.a, item.b) if session.shown_order(annotator, item.id) == ("a", "b") else (item.b, item.a)
        message = MESSAGES.get(request.query_params.get("msg", ""))
        return render(request, "item.html", annotator=annotator, item=item, left=left, right=right,
                      progress=progress, last=session.store.last(annotator), message=message)  # fmt: skip

    async def set_annotator(request: Request) -> Response:
        form = await form_of(request)
        if isinstance(form, Response):
            return form
        name = clean_name(form.get("name", ""))
        if name is None:
            return render(request, "name.html", 400, rule=NAME_RULE, error=True, typed=form.get("name", "")[:40])
        response = RedirectResponse("/", 303)
        # Lax (as the token's): a link to the page from another site still finds the annotator; POSTs are guarded
        # by the strict CSRF cookie.
        response.set_cookie(cookie["annotator"], name, max_age=365 * 24 * 3600, httponly=True, samesite="lax")
        return response

    async def annotated_form(request: Request) -> tuple[dict[str, str], str] | Response:
        """The form of a POST and who sent it; a refusal, or back to the name page when there is no annotator."""
        form = await form_of(request)
        if isinstance(form, Response):
            return form
        annotator = annotator_of(request)
        return RedirectResponse("/", 303) if annotator is None else (form, annotator)

    async def judge(request: Request) -> Response:
        posted = await annotated_form(request)
        if isinstance(posted, Response):
            return posted
        form, annotator = posted
        item_id, choice, rating = form.get("item", ""), form.get("choice", ""), form.get("rating", "")
        if item_id not in session.items or choice not in CHOICES:
            return PlainTextResponse("400: unknown item or choice", 400)
        if rating and not (rating.isdigit() and 1 <= int(rating) <= 7):
            return PlainTextResponse("400: the rating is 1 to 7, or empty", 400)
        session.judge(annotator, item_id, choice, int(rating) if rating else None, clean_reason(form.get("reason", "")))
        return RedirectResponse("/", 303)

    async def undo(request: Request) -> Response:
        posted = await annotated_form(request)
        if isinstance(posted, Response):
            return posted
        form, annotator = posted
        undone = session.undo(annotator, form.get("judgment", ""))
        return RedirectResponse("/?msg=undone" if undone else "/", 303)

    def static_route(name: str, content: bytes, media_type: str) -> Route:
        async def serve(request: Request) -> Response:
            return Response(content, media_type=media_type)

        return Route(f"/static/{name}", serve, methods=["GET"])

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/annotator", set_annotator, methods=["POST"]),
        Route("/judge", judge, methods=["POST"]),
        Route("/undo", undo, methods=["POST"]),
        Route("/favicon.ico", lambda request: Response(status_code=204), methods=["GET"]),
        *(static_route(name, content, kind) for name, (content, kind) in static_files().items()),
    ]
    middleware = [Middleware(Guard, token=token, loopback=loopback, token_cookie=cookie["token"])]
    return Starlette(routes=routes, middleware=middleware)
