"""Who labels what next: items in one seeded order, up to ``per_item`` judgments of each from different
annotators, never the same item twice to one annotator, and an item being shown to someone held for them
(a lease) so that two annotators at once get different items when one judgment per item is wanted."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lmgym.errors import InputError
from lmgym.label.sources import Item
from lmgym.label.store import LabelStore, judgment_row, new_id, now

LEASE_SECONDS = 15 * 60  # an annotator who walks away frees the item after this long
CHOICES = {"1": "left", "2": "right", "t": "tie", "s": "skip"}


@dataclass(frozen=True)
class Progress:
    mine: int
    mine_total: int
    all: int
    all_total: int


class LabelSession:
    """The items of one `lmgym label` server and the judgments of them in ``store``; not thread-safe: the app calls
    it from its one event loop."""

    def __init__(self, items: Sequence[Item], store: LabelStore, per_item: int = 1, seed: int = 0) -> None:
        if per_item < 1:
            raise InputError(f"--per-item must be at least 1, got {per_item}")
        self.items = {it.id: it for it in items}
        self.order = list(self.items.values())
        random.Random(seed).shuffle(self.order)
        self.store, self.per_item, self.seed = store, per_item, seed
        self.leases: dict[str, tuple[str, float]] = {}  # annotator → (item id, expiry on the monotonic clock)
        self.blind_eval = any(it.blind_eval for it in self.order)

    def shown_order(self, annotator: str, item_id: str) -> tuple[str, str]:
        """Which side of the item is shown left and right: random per annotator and item, yet the same after a
        restart (a page rendered before a kill still posts a valid answer)."""
        digest = hashlib.sha256(f"{self.seed}|{annotator}|{item_id}".encode()).digest()
        return ("b", "a") if digest[0] & 1 else ("a", "b")

    def _open_to(self, annotator: str, item_id: str, now_: float) -> bool:
        """The annotator has not seen the item, and its judgments plus others' live leases leave room."""
        if annotator in self.store.judges(item_id):
            return False
        held = sum(1 for who, (it, until) in self.leases.items() if it == item_id and who != annotator and until > now_)
        return self.store.counted(item_id) + held < self.per_item

    def current(self, annotator: str) -> Item | None:
        """The item to show ``annotator`` now (held for them), or None when none is open to them."""
        t = time.monotonic()
        lease = self.leases.get(annotator)
        if lease is not None and self._open_to(annotator, lease[0], t):
            self.leases[annotator] = (lease[0], t + LEASE_SECONDS)
            return self.items[lease[0]]
        self.leases.pop(annotator, None)
        for item in self.order:
            if self._open_to(annotator, item.id, t):
                self.leases[annotator] = (item.id, t + LEASE_SECONDS)
                return item
        return None

    def remaining(self, annotator: str) -> int:
        """Items the annotator has not seen that still need judgments (some may be held by others now)."""
        return sum(
            annotator not in self.store.judges(it.id) and self.store.counted(it.id) < self.per_item for it in self.order
        )

    def judge(
        self, annotator: str, item_id: str, choice: str, rating: int | None = None, reason: str = ""
    ) -> dict[str, Any]:
        """Record ``annotator``'s judgment (a key of CHOICES) of the item; a repeated post of an item they already
        judged (a retry after a lost response) returns the stored row instead of writing a second one."""
        item = self.items[item_id]
        existing = self.store.judges(item_id).get(annotator)
        if existing is not None:
            return existing
        order = self.shown_order(annotator, item_id)
        what = CHOICES[choice]
        if what in ("left", "right"):
            row = judgment_row(item, annotator, "pick", order[what == "right"], order, rating, reason)
        else:
            row = judgment_row(item, annotator, what, None, order, rating if what == "tie" else None, reason)
        self.store.append(row)
        self.leases.pop(annotator, None)
        return row

    def undo(self, annotator: str, judgment_id: str) -> dict[str, Any] | None:
        """Withdraw the annotator's last judgment if it is ``judgment_id`` (so a repeated post undoes nothing
        more); its item comes back to them next. Returns the withdrawn row."""
        last = self.store.last(annotator)
        if last is None or last["id"] != judgment_id:
            return None
        row = {"id": new_id(), "judgment": "undo", "undoes": judgment_id, "item": last["item"]}
        self.store.append(row | {"annotator": annotator, "time": now()})
        self.leases[annotator] = (last["item"], time.monotonic() + LEASE_SECONDS)
        return last

    def progress(self, annotator: str) -> Progress:
        mine = self.store.done_by(annotator)
        done = sum(min(self.store.counted(it.id), self.per_item) for it in self.order)
        return Progress(mine, mine + self.remaining(annotator), done, self.per_item * len(self.order))
