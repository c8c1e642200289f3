"""Text for the realistic zoo, taken from this machine: the docstrings of Python's standard library.

Nothing is downloaded. Each documented function or class gives one ``Doc``: its module
(the "topic" a fine-tune's data is drawn from), a short query (its name and summary line)
and a passage (the rest of its docstring). That is enough for the data practitioners
fine-tune sentence encoders on: (query, passage) pairs for MultipleNegativesRankingLoss,
scored pairs for CosineSimilarityLoss, and plain passages for masked-LM pretraining.
"""
from __future__ import annotations

import importlib
import inspect
import random
import re
from dataclasses import dataclass
from functools import cache

# Modules that import everywhere CPython does, grouped so that each fine-tune's data can
# come from a few topics of its own.
TOPICS: dict[str, tuple[str, ...]] = {
    "text": ("string", "textwrap", "re", "difflib", "unicodedata", "codecs", "html", "shlex"),
    "data": ("json", "csv", "configparser", "base64", "binascii", "struct", "pickle", "plistlib"),
    "numbers": ("math", "cmath", "decimal", "fractions", "statistics", "random", "numbers", "operator"),
    "files": ("os", "os.path", "pathlib", "shutil", "tempfile", "glob", "fnmatch", "filecmp", "stat"),
    "archives": ("zipfile", "tarfile", "gzip", "bz2", "lzma", "zlib"),
    "time": ("datetime", "time", "calendar", "zoneinfo", "sched"),
    "collections": ("collections", "heapq", "bisect", "array", "itertools", "functools", "copy", "weakref", "queue"),
    "net": ("socket", "ssl", "selectors", "http.client", "urllib.request", "urllib.parse", "smtplib", "ftplib", "ipaddress"),
    "email": ("email.message", "email.utils", "email.parser", "mailbox", "mimetypes"),
    "concurrency": ("threading", "multiprocessing", "concurrent.futures", "subprocess", "signal", "asyncio"),
    "runtime": ("inspect", "ast", "dis", "traceback", "warnings", "contextlib", "abc", "types", "typing", "importlib"),
    "tools": ("argparse", "logging", "unittest", "doctest", "pdb", "timeit", "pprint", "getopt", "enum", "dataclasses"),
}


@dataclass(frozen=True)
class Doc:
    topic: str
    module: str
    query: str  # "module.name: summary line"
    passage: str  # the docstring's body (or its summary again when it has no body)


@cache
def corpus() -> tuple[Doc, ...]:
    """Every documented public function, class and method of ``TOPICS``' modules, in a fixed order."""
    docs = []
    for topic, modules in TOPICS.items():
        for name in modules:
            try:
                module = importlib.import_module(name)
            except ImportError:  # a CPython built without the module (ssl, lzma): fewer documents
                continue
            for qualname, obj in sorted(_members(module).items(), key=lambda kv: kv[0]):
                doc = inspect.getdoc(obj)
                if not doc or len(doc) < 40:
                    continue
                summary, _, body = doc.partition("\n\n")
                body = _squash(body) or _squash(summary)
                docs.append(Doc(topic, name, f"{name}.{qualname}: {_squash(summary)}", body))
    return tuple(docs)


def _members(module) -> dict[str, object]:
    out = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) not in (module.__name__, None):
            continue
        if inspect.isclass(obj):
            out[name] = obj
            out |= {f"{name}.{m}": f for m, f in vars(obj).items() if not m.startswith("_") and callable(f)}
        elif callable(obj):
            out[name] = obj
    return out


def _squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def draw(topics: tuple[str, ...], n: int, rng: random.Random) -> list[Doc]:
    """``n`` documents of the given topics, drawn without replacement while they last."""
    pool = [d for d in corpus() if d.topic in topics]
    rng.shuffle(pool)
    return (pool * (n // max(len(pool), 1) + 1))[:n]
