"""The labelling server's defences, spoken to in plain HTTP: the access token of a non-loopback server, the Host
check of a loopback one, CSRF tokens, the body size limit, escaping, names, and no URL reaching the file system."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlencode

from lmgym.label.sources import jsonl_pairs

from .helpers import cookies_of, pair_source, request, write_jsonl


def cookie_header(cookies: dict[str, str]) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}


def signed_in(base: str, name: str = "alice") -> tuple[dict[str, str], str]:
    """Cookies of a browser that gave its name, and the CSRF token of its page."""
    _, headers, html = request(base, "GET", "/")
    cookies = cookies_of(headers)
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    status, headers, _ = request(
        base, "POST", "/annotator", urlencode({"csrf": csrf, "name": name}), cookie_header(cookies)
    )
    assert status == 303
    return cookies | cookies_of(headers), csrf


def test_a_non_loopback_server_needs_its_token(tmp_path: Path, cli_server) -> None:
    server = cli_server(str(pair_source(tmp_path / "p.jsonl", 3)), "--out", str(tmp_path / "l.jsonl"),
                        "--host", "0.0.0.0", "--port", "0")  # fmt: skip
    token = re.search(r"\?token=([\w-]+)", server.url).group(1)  # made with `secrets` and printed
    assert len(token) >= 20
    for path in ("/", "/static/label.js", "/?token=wrong", "/nope"):
        assert request(server.base, "GET", path)[0] == 403
    assert request(server.base, "POST", "/judge", "choice=1")[0] == 403
    status, headers, _ = request(server.base, "GET", f"/?token={token}")
    assert status == 303 and headers["location"] == "/"  # the token moves from the URL into a cookie
    cookies = cookies_of(headers)
    assert any(k.endswith("_token") for k in cookies)
    status, _, html = request(server.base, "GET", "/", headers=cookie_header(cookies))
    assert status == 200 and 'name="csrf"' in html
    assert request(server.base, "GET", "/", headers={"Cookie": "lmgym0_token=" + token})[0] == 403


def test_loopback_server_answers_only_to_local_host_names(tmp_path: Path, thread_server) -> None:
    server = thread_server(jsonl_pairs(pair_source(tmp_path / "p.jsonl", 3)), tmp_path / "l.jsonl")
    assert "token" not in server.url
    assert request(server.base, "GET", "/")[0] == 200
    assert request(server.base, "GET", "/", headers={"Host": f"localhost:{server.port}"})[0] == 200
    assert request(server.base, "GET", "/", headers={"Host": "attacker.example"})[0] == 400  # DNS rebinding


def test_posts_need_the_csrf_token_and_a_small_body(tmp_path: Path, thread_server) -> None:
    out = tmp_path / "l.jsonl"
    items = jsonl_pairs(pair_source(tmp_path / "p.jsonl", 3))
    server = thread_server(items, out)
    cookies, csrf = signed_in(server.base)
    sent = cookie_header(cookies)
    _, _, html = request(server.base, "GET", "/", headers=sent)
    item = re.search(r'name="item" value="([^"]+)"', html).group(1)
    form = {"item": item, "choice": "1"}
    assert request(server.base, "POST", "/judge", urlencode(form), sent)[0] == 403  # no CSRF token
    assert request(server.base, "POST", "/judge", urlencode(form | {"csrf": "x" * 43}), sent)[0] == 403
    no_cookie = {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items() if not k.endswith("_csrf"))}
    assert request(server.base, "POST", "/judge", urlencode(form | {"csrf": csrf}), no_cookie)[0] == 403
    foreign = sent | {"Origin": "http://attacker.example"}
    assert request(server.base, "POST", "/judge", urlencode(form | {"csrf": csrf}), foreign)[0] == 403
    assert not out.read_text()  # nothing refused was written
    huge = urlencode(form | {"csrf": csrf, "reason": "x" * 70_000})
    assert request(server.base, "POST", "/judge", huge, sent)[0] == 413
    assert request(server.base, "POST", "/judge", urlencode(form | {"csrf": csrf, "choice": "9"}), sent)[0] == 400
    assert request(server.base, "POST", "/judge", urlencode(form | {"csrf": csrf, "item": "../x"}), sent)[0] == 400
    assert request(server.base, "POST", "/judge", urlencode(form | {"csrf": csrf}), sent)[0] == 303
    assert request(server.base, "POST", "/judge", urlencode(form | {"csrf": csrf}), sent)[0] == 303  # a retry
    assert len(out.read_text().splitlines()) == 1  # ... is not written twice


def test_no_url_reaches_the_file_system(tmp_path: Path, thread_server) -> None:
    server = thread_server(jsonl_pairs(pair_source(tmp_path / "p.jsonl", 3)), tmp_path / "l.jsonl")
    status, headers, body = request(server.base, "GET", "/static/label.css")
    assert status == 200 and headers["content-type"].startswith("text/css") and "1280" in body
    for path in ("/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/templates/item.html",
                 "/static/", "/static/label.css/..", "//etc/passwd", "/static/__init__.py"):  # fmt: skip
        status, _, body = request(server.base, "GET", path)
        assert status == 404 and "import" not in body, path


def test_names_and_texts_are_escaped_and_checked(tmp_path: Path, thread_server) -> None:
    probe = "<script>window.pwned=1</script><b>x</b>"
    source = write_jsonl(tmp_path / "x.jsonl", [{"prompt": "<i>hi</i> & bye", "responses": [probe, "plain"]}])
    server = thread_server(jsonl_pairs(source), tmp_path / "l.jsonl")
    _, headers, html = request(server.base, "GET", "/")
    cookies = cookies_of(headers)
    csrf = re.search(r'name="csrf" value="([^"]+)"', html).group(1)
    for bad in ("<script>alert(1)</script>", "a" * 33, "", "-dash", "two words", "é"):
        status, _, page = request(server.base, "POST", "/annotator", urlencode({"csrf": csrf, "name": bad}),
                                  cookie_header(cookies))  # fmt: skip
        assert status == 400 and "<script>alert" not in page, bad
    tampered = cookie_header(cookies | {f"lmgym{server.port}_annotator": "<b>"})
    assert 'id="name"' in request(server.base, "GET", "/", headers=tampered)[2]  # asked for a name again
    cookies, _ = signed_in(server.base, "o.brien_2-x")
    status, headers, page = request(server.base, "GET", "/", headers=cookie_header(cookies))
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;&lt;b&gt;x&lt;/b&gt;" in page
    assert "<script>window" not in page and "<b>x" not in page and "&lt;i&gt;hi&lt;/i&gt; &amp; bye" in page
    assert "script-src 'self'" in headers["content-security-policy"]  # and inline scripts could not run anyway
