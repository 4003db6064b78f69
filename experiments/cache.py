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

Multi-process jobs (``jax.process_count() > 1``, one process per host): a stage's training is
one SPMD program whose collectives and Orbax saves need every process, so the processes
must act as one run. `cached_run` then

1. decides hit or miss on process 0 and gives every process that decision (all processes'
   views are gathered; when process 0 sees a finished entry that another process cannot
   see, every process raises `CacheNotSharedError`, because the cache must live on a
   filesystem all hosts share, like a multi-host workdir);
2. on a miss, trains in one temporary directory that process 0 creates and names (a random
   token broadcast from process 0), after a barrier and a check that every process sees it;
   all processes call ``train_fn`` on it together, so Orbax writes the checkpoints
   cooperatively, as in any multi-host training loop;
3. after a barrier, process 0 alone writes ``cache_key.json`` and renames the directory
   into place (losing the race to an independent job is handled as on one process); the
   others wait at a second barrier and then read the entry.

Before, each process made its own ``mkdtemp`` directory, so the processes trained one run
into two directories and Orbax's cooperative save of the first checkpoint waited forever
for files the other process wrote elsewhere. With one process the behaviour is the
single-host one above, unchanged. `agree_present` is the same hit/miss agreement for
files cached inside an entry (e.g. the teacher's sampler evaluation).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Iterable

import jax
import numpy as np
from jax.experimental import multihost_utils

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
    record = {"kind": kind, "key": key, "code": code}
    if jax.process_count() > 1:
        return _cached_run_all_processes(final, record, train_fn, print_fn or print)
    if is_complete(final):
        return final
    root = os.path.dirname(final)
    os.makedirs(root, exist_ok=True)
    (print_fn or print)(f"training {kind} into the cache: {final}")
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(final)}.tmp-", dir=root)
    try:
        train_fn(tmp)
        _publish(tmp, final, record)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _publish(tmp: str, final: str, record: dict) -> None:
    """Marks `tmp` finished and renames it to `final` (a lost race discards `tmp`)."""
    with open(os.path.join(tmp, KEY_FILE), "w") as f:
        json.dump(record, f, indent=1, sort_keys=True, default=str)
    try:
        os.rename(tmp, final)  # atomic; fails when another run got there first
    except OSError:
        if not is_complete(final):
            raise
        shutil.rmtree(tmp, ignore_errors=True)


class CacheNotSharedError(RuntimeError):
    """The processes of a multi-process job do not see the same cache directory."""


def _all_processes(flag: bool) -> list[bool]:
    """`flag` of every process, in process order (the same list on every process)."""
    gathered = multihost_utils.process_allgather(np.asarray(flag, np.int32))
    return [bool(v) for v in np.asarray(gathered).reshape(-1)]


def _require_shared(seen: list[bool], path: str) -> None:
    blind = [i for i, s in enumerate(seen) if not s]
    if blind:
        raise CacheNotSharedError(
            f"{path} exists for process 0 but not for process(es) {blind}; a multi-process job "
            "needs a cache on a filesystem all hosts share: set --config.cache_dir (or "
            "$FDIV_CACHE) to the same shared directory on every host."
        )


def agree_present(present: bool, path: str) -> bool:
    """Process 0's `present` on every process, for a file `path` cached inside an entry.

    With several processes, a cached result decides whether a collective computation runs,
    so all must take the same branch. Raises `CacheNotSharedError` when process 0 has the
    file and some process cannot see it. One process: returns `present`.
    """
    if jax.process_count() == 1:
        return present
    seen = _all_processes(present)
    if seen[0]:
        _require_shared(seen, path)
    return seen[0]


def _barrier(name: str, final: str) -> None:
    multihost_utils.sync_global_devices(f"fdiv_cache_{name}_{os.path.basename(final)}")


def _cached_run_all_processes(
    final: str, record: dict, train_fn: Callable[[str], Any], print_fn: Callable[[str], None]
) -> str:
    """`cached_run` for a multi-process job (module docstring, "Multi-process jobs")."""
    if agree_present(is_complete(final), final):
        return final
    first = jax.process_index() == 0
    token = multihost_utils.broadcast_one_to_all(
        np.frombuffer(os.urandom(8), np.uint32) if first else np.zeros(2, np.uint32)
    )
    token = "".join(f"{int(t):08x}" for t in np.asarray(token))
    tmp = os.path.join(os.path.dirname(final), f".{os.path.basename(final)}.tmp-{token}")
    if first:
        print_fn(f"training {record['kind']} into the cache: {final}")
        os.makedirs(tmp)
    _barrier("created", final)
    try:
        _require_shared(_all_processes(os.path.isdir(tmp)), tmp)
        train_fn(tmp)
        _barrier("trained", final)
        publish_error = None
        if first:
            try:
                _publish(tmp, final, record)
            except OSError as e:  # raised after the barrier, so that no process waits forever
                publish_error = e
    except BaseException:
        if first:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _barrier("published", final)
    if publish_error is not None:
        shutil.rmtree(tmp, ignore_errors=True)
        raise publish_error
    if not is_complete(final):
        raise CacheNotSharedError(
            f"{final} was not published by process 0 or cannot be read by process "
            f"{jax.process_index()}; see process 0's error."
        )
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
