"""WordNet for METEOR, offline: a system WordNet 3.0 arranged as an NLTK corpus folder.

NLTK's WordNet reader wants ``corpora/wordnet/`` with the database files plus a ``lexnames`` file.
Debian's ``wordnet-base`` and ``wordnet-sense-index`` packages hold WordNet 3.0 (the version NLTK
ships) in ``/usr/share/wordnet`` but no ``lexnames``. On first use we copy the files (real copies:
NLTK's path checks refuse symlinks out of its data folder) into ``~/.cache/lmgym/nltk_data`` and
write ``lexnames`` from the fixed WordNet 3.0 list of lexicographer files.

An NLTK WordNet that is already installed (``nltk.download("wordnet")``) is used as is.
"""

from __future__ import annotations

import os
import shutil
import warnings
from functools import lru_cache
from pathlib import Path

from lmgym.metrics.base import MissingRequirement

# Files NLTK's WordNetCorpusReader opens (lexnames is generated, the rest copied).
DATABASE_FILES = (
    "index.adj",
    "index.adv",
    "index.noun",
    "index.verb",
    "data.adj",
    "data.adv",
    "data.noun",
    "data.verb",
    "adj.exc",
    "adv.exc",
    "noun.exc",
    "verb.exc",
    "index.sense",
    "cntlist.rev",
)
# Where WordNet installs its database: $WNSEARCHDIR, $WNHOME/dict, Debian, the upstream default.
SYSTEM_DIRS = ("/usr/share/wordnet", "/usr/local/WordNet-3.0/dict", "/usr/share/WordNet-3.0/dict")
INSTALL_HINT = (
    "METEOR needs WordNet 3.0: `apt-get install wordnet-base wordnet-sense-index` (Debian/Ubuntu), "
    "or `python -c \"import nltk; nltk.download('wordnet')\"`, or set WNSEARCHDIR to a WordNet 3.0 dict folder"
)

# The 45 lexicographer files of WordNet 3.0 in file-number order, with their syntactic category
# (1 noun, 2 verb, 3 adjective, 4 adverb), as documented in lexnames(5WN).
LEXNAMES = (
    ("adj.all", 3),
    ("adj.pert", 3),
    ("adv.all", 4),
    *(
        (f"noun.{name}", 1)
        for name in [
            "Tops",
            "act",
            "animal",
            "artifact",
            "attribute",
            "body",
            "cognition",
            "communication",
            "event",
            "feeling",
            "food",
            "group",
            "location",
            "motive",
            "object",
            "person",
            "phenomenon",
            "plant",
            "possession",
            "process",
            "quantity",
            "relation",
            "shape",
            "state",
            "substance",
            "time",
        ]
    ),
    *(
        (f"verb.{name}", 2)
        for name in [
            "body",
            "change",
            "cognition",
            "communication",
            "competition",
            "consumption",
            "contact",
            "creation",
            "emotion",
            "motion",
            "perception",
            "possession",
            "social",
            "stative",
            "weather",
        ]
    ),
    ("adj.ppl", 3),
)


def cache_dir() -> Path:
    """``$LMGYM_CACHE/nltk_data`` (default ``~/.cache/lmgym/nltk_data``)."""
    root = os.environ.get("LMGYM_CACHE") or Path.home() / ".cache" / "lmgym"
    return Path(root) / "nltk_data"


def system_wordnet_dir() -> Path | None:
    """The first folder that holds every WordNet database file NLTK needs, or None."""
    candidates = []
    if os.environ.get("WNSEARCHDIR"):
        candidates.append(os.environ["WNSEARCHDIR"])
    if os.environ.get("WNHOME"):
        candidates.append(os.path.join(os.environ["WNHOME"], "dict"))
    candidates += SYSTEM_DIRS
    for folder in map(Path, candidates):
        if all((folder / name).is_file() for name in DATABASE_FILES):
            return folder
    return None


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{category}\n" for i, (name, category) in enumerate(LEXNAMES))


def arrange_nltk_wordnet(source: Path, data_dir: Path) -> Path:
    """Copy WordNet from ``source`` into ``data_dir/corpora/wordnet`` (skipping files already copied) and
    write ``lexnames``; returns the corpus folder."""
    target = data_dir / "corpora" / "wordnet"
    target.mkdir(parents=True, exist_ok=True)
    for name in DATABASE_FILES:
        src, dst = source / name, target / name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            tmp = target / f".{name}.{os.getpid()}.tmp"  # per process: ranks may arrange at once
            shutil.copyfile(src, tmp)  # a copy, never a link
            tmp.replace(dst)
    lexnames = target / "lexnames"
    if not lexnames.exists() or lexnames.read_text() != lexnames_text():
        tmp = target / f".lexnames.{os.getpid()}.tmp"
        tmp.write_text(lexnames_text())
        tmp.replace(lexnames)
    return target


def _nltk_installed_wordnet() -> Path | None:
    import nltk

    for pattern in ("corpora/wordnet", "corpora/wordnet.zip/wordnet/"):
        try:
            found = nltk.data.find(pattern)
        except LookupError:
            continue
        if isinstance(found, Path) or os.path.isdir(str(found)):
            return Path(str(found))
    return None


def wordnet_available() -> str | None:
    """None when a WordNet can be had offline, else what to install."""
    try:
        import nltk  # noqa: F401
    except ImportError:
        return "`pip install nltk`"
    if (cache_dir() / "corpora" / "wordnet" / "lexnames").exists() or system_wordnet_dir() or _nltk_installed_wordnet():
        return None
    return INSTALL_HINT


@lru_cache(maxsize=1)
def load_wordnet():
    """An NLTK ``WordNetCorpusReader``: NLTK's own WordNet if installed, else the system one arranged in the
    lmgym cache (done once). Also puts the cache on ``nltk.data.path`` so ``nltk.corpus.wordnet`` finds it."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    folder = _nltk_installed_wordnet()
    if folder is None:
        source = system_wordnet_dir()
        arranged = cache_dir() / "corpora" / "wordnet"
        if source is not None:
            folder = arrange_nltk_wordnet(source, cache_dir())
        elif (arranged / "lexnames").exists() and all((arranged / n).is_file() for n in DATABASE_FILES):
            folder = arranged
        else:
            raise MissingRequirement(INSTALL_HINT)
        if str(cache_dir()) not in nltk.data.path:
            nltk.data.path.append(str(cache_dir()))

    class WordNet30Reader(WordNetCorpusReader):
        def map_wn(self, version: str = "wordnet"):
            # NLTK maps the loaded WordNet's synsets onto 3.0's (its "wordnet") for multilingual lookups, reading
            # index.sense twice (~8 s). This database is 3.0 itself, and METEOR is English only.
            return None if self.get_version() == "3.0" else super().map_wn(version)

    with warnings.catch_warnings():  # "multilingual functions are not available": English is all METEOR uses
        warnings.simplefilter("ignore")
        return WordNet30Reader(str(folder), None)
