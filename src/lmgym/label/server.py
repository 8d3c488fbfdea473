"""`lmgym label SOURCE... --out labels.jsonl`: build the items, rebuild the state from the labels file, bind the
socket, print the URL and serve until interrupted."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from starlette.applications import Starlette

from lmgym.errors import StateError
from lmgym.label.app import create_app
from lmgym.label.security import is_loopback, new_token
from lmgym.label.session import LabelSession
from lmgym.label.sources import Item, load_items
from lmgym.label.store import LabelStore


@dataclass
class Prepared:
    app: Starlette
    sock: socket.socket
    url: str
    session: LabelSession
    token: str | None


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one); SO_REUSEADDR lets a restart after a kill take the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as err:
        sock.close()
        raise StateError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def prepare(
    items: list[Item],
    out: Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    per_item: int = 1,
    seed: int = 0,
) -> Prepared:
    """Everything but the serving: the session over ``out`` and the bound socket. A server on another address
    than loopback always has an access token (a fresh one unless given)."""
    loopback = is_loopback(host)
    if not loopback and not token:
        token = new_token()
    sock = bind(host, port)
    store = None
    try:
        store = LabelStore(out, items)
        session = LabelSession(items, store, per_item, seed)
    except BaseException:
        sock.close()
        if store is not None:
            store.close()
        raise
    bound = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    shown = f"[{shown}]" if ":" in shown and not shown.startswith("[") else shown
    url = f"http://{shown}:{bound}/" + (f"?token={token}" if token else "")
    return Prepared(create_app(session, bound, token, loopback), sock, url, session, token)


def run(prepared: Prepared) -> None:
    """Serve until Ctrl-C (uvicorn, one process: every judgment passes through the one event loop)."""
    import uvicorn

    config = uvicorn.Config(prepared.app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[prepared.sock])


def serve(
    sources: list[Path],
    out: Path,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    per_item: int = 1,
    sample: int | None = None,
    blind_eval: bool = False,
    seed: int = 0,
    console: Console | None = None,
) -> None:
    console = console or Console()
    items = load_items(sources, sample, blind_eval, seed, out)
    prepared = prepare(items, out, host, port, token, per_item, seed)
    store = prepared.session.store
    if store.repaired_bytes:
        console.print(
            f"{out}: cut a last line left half-written by a crash ({store.repaired_bytes} bytes)", markup=False
        )
    kind = "blind A/B pairs" if blind_eval else "pairs"
    console.print(
        f"{len(items)} {kind} from {', '.join(map(str, sources))}; up to {per_item} judgment(s) each; "
        f"{len(store.active)} judgment(s) already in {out}",
        markup=False,
    )
    if not is_loopback(host):
        console.print(
            f"listening on {host} (plain HTTP: the token and the labels cross the network unencrypted; "
            "use a trusted network or a TLS proxy). Every request needs the token."
        )
    # soft_wrap: a long URL must stay on one line for whoever copies or parses it
    console.print(
        f"open {prepared.url}  (Ctrl-C stops; rerun the same command to continue)", soft_wrap=True, markup=False
    )
    sys.stdout.flush()  # the URL is read by whoever started us (a script, a test) before anything else happens
    try:
        run(prepared)
    finally:
        store.close()
