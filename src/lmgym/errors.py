"""The errors lmgym raises on purpose. Each derives from `LmgymError`, which the command line prints as
one line (exit 2), and from the builtin exception a caller would expect (ValueError for a bad value, ...),
so ``except ValueError`` keeps working. Anything else that escapes is a bug in lmgym or in the user's own
code: `UserCodeError` wraps an exception raised by user code that lmgym called (a reward, a task factory,
a callback) and names it and the user's file and line."""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from types import TracebackType

_PACKAGE = Path(__file__).resolve().parent


class LmgymError(Exception):
    """Base of every error lmgym raises on purpose; the message says what to change."""

    def __str__(self) -> str:  # a KeyError subclass would otherwise show the repr of its message
        return str(self.args[0]) if len(self.args) == 1 else super().__str__()


class InputError(LmgymError, ValueError):
    """A value (setting, data, argument) that cannot be used; the message names it."""


class NotFoundError(LmgymError, KeyError):
    """An unknown name (task, metric, algorithm, split); the message lists the known ones."""


class MissingFileError(LmgymError, FileNotFoundError):
    """A file or folder the command needs does not exist."""


class RunExistsError(LmgymError, FileExistsError):
    """A run folder of that name exists already."""


class WrongTypeError(LmgymError, TypeError):
    """An argument of the wrong type (e.g. one string where a list of strings is expected)."""


class MissingPackageError(LmgymError, ImportError):
    """An optional package is not installed; the message gives the pip command (e.g. an lmgym extra)."""


class HubError(LmgymError, ConnectionError):
    """The Hugging Face hub cannot be reached (offline mode, no network) or refused a request; the message says
    which, and what to do."""


class TrainingError(LmgymError, RuntimeError):
    """Training cannot go on (non-finite loss, exploding KL, bad reward); the message names where."""


class StateError(LmgymError, RuntimeError):
    """An object used out of order (e.g. stepping a finished episode) or an internal consistency check."""


def user_frame(tb: TracebackType | None) -> traceback.FrameSummary | None:
    """The innermost frame of a traceback that belongs to neither lmgym nor an installed library nor
    Python itself: where the user's own code raised."""
    library_roots = {Path(p).resolve() for p in sys.path if "site-packages" in p or "dist-packages" in p}
    library_roots.add(Path(traceback.__file__).resolve().parent)  # the standard library
    found = None
    for frame in traceback.extract_tb(tb):
        path = Path(frame.filename).resolve()
        if frame.filename.startswith("<") and frame.filename != "<string>":
            continue
        if path.is_relative_to(_PACKAGE) or any(path.is_relative_to(root) for root in library_roots):
            continue
        found = frame
    return found


class UserCodeError(LmgymError):
    """An exception raised inside user code that lmgym called; names what lmgym was calling (``what``: e.g.
    "reward 'my_reward'"), the exception and the user's file:line. The original is chained (``__cause__``)."""

    def __init__(self, what: str, error: BaseException) -> None:
        frame = user_frame(error.__traceback__)
        where = f" at {frame.filename}:{frame.lineno}" if frame is not None else ""
        super().__init__(f"{what} raised {type(error).__name__}{where}: {error}")
        self.what, self.error = what, error
        self.location = (frame.filename, frame.lineno) if frame is not None else None
