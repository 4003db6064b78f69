"""One cache for trained stages (EDM teacher, feature classifier), keyed by what changes them.

`cached_run(kind, key, train_fn, cache_dir=...)` returns the directory of a finished run of
stage `kind` whose result is determined by `key` (a JSON-able dict holding only the fields
that change the trained model, e.g. `experiments.settings.TeacherConfig.model_key`) and by
the stage's code (`code_version` of the files it depends on). On a miss it calls
``train_fn(tmp_dir)`` in a fresh temporary directory next to the final one and renames it into
place atomically, so

- two runs starting at once both train, and the first rename wins; the other discards its
  copy and uses the winner's (neither reads a half-written run);
- a run killed while training leaves no entry (its temporary directory is removed when the
  exception passes through, or is ignored later: names starting with ``.`` are never read).

Decisions: the code version is a hash of source files (not a hand-bumped number) because a
stale reuse from older code is silent and has happened (issue 9's README rows); it covers the
library (``fdiv/``) and the stage's own module, not the experiments that use the stage, so
editing f-distill does not retrain its teacher.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEY_FILE = "cache_key.json"


def cache_root(cache_dir: str = "") -> str:
    """`cache_dir`, else ``$FDIV_CACHE``, else ``~/.cache/fdiv``."""
    if cache_dir:
        return cache_dir
    return os.environ.get("FDIV_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "fdiv"))


def digest(obj: Any, length: int = 12) -> str:
    """A stable hex digest of a JSON-able object (dict keys sorted)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


@functools.lru_cache(maxsize=None)
def _source_digest(paths: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(os.path.relpath(path, REPO).encode())
        with open(path, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:12]


def code_version(*sources: str) -> str:
    """Digest of the Python sources under `sources` (files or directories, repo-relative).

    Example: ``code_version("fdiv", "experiments/edm_teacher.py")``.
    """
    files = []
    for s in sources:
        p = os.path.join(REPO, s)
        if os.path.isdir(p):
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
                files.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(".py"))
        elif os.path.exists(p):
            files.append(p)
    return _source_digest(tuple(sorted(files)))


def entry_dir(kind: str, key: dict, *, cache_dir: str = "", code: str = "") -> str:
    """Directory of the cache entry of stage `kind` for `key` and code version `code`."""
    return os.path.join(cache_root(cache_dir), f"{kind}_{digest({'key': key, 'code': code})}")


def is_complete(directory: str) -> bool:
    return os.path.exists(os.path.join(directory, KEY_FILE))


def cached_run(
    kind: str,
    key: dict,
    train_fn: Callable[[str], Any],
    *,
    cache_dir: str = "",
    code: str = "",
    print_fn: Callable[[str], None] | None = None,
) -> str:
    """The directory of a finished stage run for `key`, training it on a miss.

    Args:
      kind: stage name, the prefix of the entry (``"teacher_ring8"``).
      key: JSON-able fields that change the result (only those: anything else in it would
        retrain for nothing).
      train_fn: ``train_fn(directory)`` trains the stage into `directory` (a fresh, empty
        temporary directory) and returns when it is finished.
      cache_dir: cache root (see `cache_root`).
      code: code version (see `code_version`).
      print_fn: one line when training starts (default: print).

    Returns:
      The entry directory (``<root>/<kind>_<digest>``), holding ``cache_key.json``.
    """
    final = entry_dir(kind, key, cache_dir=cache_dir, code=code)
    if is_complete(final):
        return final
    root = os.path.dirname(final)
    os.makedirs(root, exist_ok=True)
    (print_fn or print)(f"training {kind} into the cache: {final}")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=root)
    try:
        train_fn(tmp)
        with open(os.path.join(tmp, KEY_FILE), "w") as f:
            json.dump(
                {"kind": kind, "key": key, "code": code}, f, indent=1, sort_keys=True, default=str
            )
        try:
            os.rename(tmp, final)  # atomic; fails when another run got there first
        except OSError:
            if not is_complete(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def entries(cache_dir: str = "", kind: str | None = None) -> Iterable[str]:
    """Finished entries in the cache (optionally of one kind)."""
    root = cache_root(cache_dir)
    if not os.path.isdir(root):
        return []
    return sorted(
        os.path.join(root, n)
        for n in os.listdir(root)
        if not n.startswith(".")
        and (kind is None or n.startswith(kind + "_"))
        and is_complete(os.path.join(root, n))
    )
