"""Pieces the `lmgym label` tests share: source files, servers (in this process on a thread, or the real command
in a subprocess), plain HTTP requests and the page actions of an annotator."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from lmgym.label.server import Prepared

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
REPO = Path(__file__).resolve().parents[2]
FILLER = "the film keeps a steady pace and its cast is warm and quite funny throughout".split()  # noqa: SIM905


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def pair_source(path: Path, n: int, words: int = 8) -> Path:
    """A JSONL source of ``n`` prompts with two responses each (``words`` words per response)."""
    rows = []
    for i in range(n):
        text = " ".join(FILLER[(i + k) % len(FILLER)] for k in range(words))
        responses = [f"A{i} {text}", f"B{i} {text}"]
        rows.append({"id": f"p{i}", "prompt": f"Prompt {i}: review the movie.", "responses": responses})
    return write_jsonl(path, rows)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThreadServer:
    """The app of `prepare` served by uvicorn on a thread of this process (starts in milliseconds)."""

    def __init__(self, prepared: Prepared) -> None:
        import uvicorn

        self.prepared = prepared
        self.url = prepared.url
        self.base = prepared.url.split("?")[0].rstrip("/")
        self.port = prepared.sock.getsockname()[1]
        config = uvicorn.Config(prepared.app, log_level="warning", access_log=False, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [prepared.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline, "the in-process server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.prepared.session.store.close()


class CliServer:
    """`python -m lmgym.cli label ...` in a subprocess; ``url`` is the one it printed."""

    def __init__(self, args: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lmgym.cli", "label", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO,
        )  # fmt: skip
        self.output: list[str] = []
        deadline = time.monotonic() + 60
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"lmgym label exited before printing its URL:\n{''.join(self.output)}")
            self.output.append(line)
            found = re.search(r"http://127\.0\.0\.1:\d+/\S*", line)
            if found:
                self.url = found.group(0)
                self.base = self.url.split("?")[0].rstrip("/")
                break
            assert time.monotonic() < deadline, "lmgym label printed no URL within 60 s"

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a crash."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc.stdout.close()


def request(
    base: str, method: str, path: str, body: str | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], str]:
    """One HTTP request without redirects or cookie handling: (status, headers with lower-case names, body)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = dict(headers or {})
    if body is not None:
        headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
    conn.request(method, path, body=body.encode() if body is not None else None, headers=headers)
    response = conn.getresponse()
    out = (response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode())
    conn.close()
    return out


def cookies_of(headers: dict[str, str]) -> dict[str, str]:
    """name → value of a response's Set-Cookie headers (http.client joins several with ', ')."""
    return dict(re.findall(r"(lmgym\d+_\w+)=([^;,\s]*)", headers.get("set-cookie", "")))


def sign_in(page, base: str, name: str) -> None:
    page.goto(base + "/")
    page.fill("#name", name)
    page.press("#name", "Enter")
    page.wait_for_selector("body[data-keys=ready]")  # the page's script listens to the keys


def press(page, key: str) -> str:
    """Press ``key`` on an item page and wait for the page after it (the server answers a judgment only once it
    is on disk); returns the new page's item id ("" when nothing is left)."""
    with page.expect_navigation(wait_until="domcontentloaded"):
        page.keyboard.press(key)
    page.wait_for_selector("body[data-keys=ready]")
    return page.get_attribute("body", "data-item") or ""


def shown(page) -> tuple[str, str, str]:
    """(item id, left response, right response) of the item page."""
    return page.get_attribute("body", "data-item"), page.inner_text("#left .text"), page.inner_text("#right .text")
