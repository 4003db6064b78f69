"""Orbax checkpoints of a whole training state, with exact resume and corrupt-step fallback.

`Checkpointer` wraps `orbax.checkpoint.CheckpointManager` (``args`` API). Each checkpoint is a
step directory ``<workdir>/checkpoints/<step>/`` holding two items:

- ``state``: every array leaf of the state pytree (`fdiv.train.TrainState`: parameters,
  optimiser states, EMA, step counter, PRNG key), saved with `ocp.args.StandardSave` as a
  nested dict keyed by the leaves' pytree paths. Typed PRNG keys are stored as their raw
  key data and re-wrapped on restore.
- ``meta``: JSON (`ocp.args.JsonSave`) with the step, the data-pipeline position and any
  caller-supplied metadata (the run's config).

Because the data pipeline is a pure function of (seed, step) (`fdiv.data`), the step is the
complete data-iterator position, and resuming reproduces an uninterrupted run bit for bit.

Saving policy (`should_save`): every `every_steps` steps, and whenever `every_secs` of wall time
have passed since the last save; the last `keep` checkpoints are kept. Saves are asynchronous;
`wait` (called by `restore_latest` and `close`) blocks until they are on disk.

Restoring (`restore_latest`) tries the newest step first. A step that cannot be read (a
damaged or half-written directory) is reported with a logged warning, moved aside to
``<workdir>/checkpoints_corrupt/<step>-<unix time>/`` (kept, not deleted, so a later save of
the same step cannot collide with it and nothing on disk is lost), and the next older step is
tried. Orbax's own temporary directories of interrupted saves are never considered steps.

Usage::

    ckpt = Checkpointer(workdir, every_steps=1000, every_secs=600, keep=3)
    state = ckpt.restore_latest(state)     # `state` is the template (shapes, shardings)
    ...
    if ckpt.should_save(step):
        ckpt.save(step, state, meta={"config": config.to_dict()})
    ckpt.close()

References:
  Orbax documentation, "Checkpointing with CheckpointManager" (``ocp.args.Composite``,
  ``StandardSave``/``StandardRestore``, ``JsonSave``/``JsonRestore``).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_]")


def _key_name(entry: Any) -> str:
    if isinstance(entry, jax.tree_util.DictKey):
        name = str(entry.key)
    elif isinstance(entry, jax.tree_util.GetAttrKey):
        name = entry.name
    elif isinstance(entry, jax.tree_util.SequenceKey):
        name = str(entry.idx)
    elif isinstance(entry, jax.tree_util.FlattenedIndexKey):
        name = str(entry.key)
    else:
        name = str(entry)
    return _SAFE.sub("_", name) or "_"


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def _leaf_paths(tree: Any) -> tuple[list[tuple[str, ...]], list[Any], Any]:
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(tree)
    paths = [tuple(_key_name(e) for e in p) for p, _ in leaves_with_path]
    if len(set(paths)) != len(paths):
        raise ValueError("Checkpointer: two leaves of the state map to the same checkpoint key "
                         "after sanitising their pytree paths; rename the offending dict keys.")
    return paths, [x for _, x in leaves_with_path], treedef


def _nest(paths: list[tuple[str, ...]], leaves: list[Any]) -> dict:
    out: dict = {}
    for path, leaf in zip(paths, leaves):
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = leaf
    return out


def _get(nested: dict, path: tuple[str, ...]) -> Any:
    node = nested
    for name in path:
        node = node[name]
    return node


def to_savable(tree: Any) -> dict:
    """Nested dict of arrays keyed by pytree path; typed PRNG keys become raw key data."""
    paths, leaves, _ = _leaf_paths(tree)
    leaves = [jax.random.key_data(x) if _is_key(x) else x for x in leaves]
    return _nest(paths, leaves)


def _abstract(x: Any) -> Any:
    if _is_key(x):
        x = jax.random.key_data(x)
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    x = np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype)


def from_savable(template: Any, restored: dict) -> Any:
    """Inverse of `to_savable`, with `template` giving structure, key types and static parts."""
    paths, leaves, treedef = _leaf_paths(template)
    out = []
    for path, t in zip(paths, leaves):
        try:
            x = _get(restored, path)
        except KeyError:
            raise ValueError(f"checkpoint has no leaf {'/'.join(path)}; the state structure changed "
                             "since it was written (different networks or optimisers).") from None
        if _is_key(t):
            x = jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
        elif tuple(x.shape) != tuple(np.shape(t)):
            raise ValueError(f"checkpoint leaf {'/'.join(path)} has shape {tuple(x.shape)}, the state "
                             f"expects {tuple(np.shape(t))}; the model changed since it was written.")
        out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


class Checkpointer:
    """Periodic, asynchronous, keep-last-k checkpoints of a state pytree in `workdir`.

    Args:
      workdir: run directory; checkpoints go to ``<workdir>/checkpoints``.
      every_steps: save when ``step % every_steps == 0`` (0 or None: never by step count).
      every_secs: also save when this many seconds passed since the last save (None: never).
      keep: number of most recent checkpoints to keep.
      async_save: write in a background thread (`wait` blocks until done).
    """

    def __init__(self, workdir: str, *, every_steps: int | None = 1000,
                 every_secs: float | None = None, keep: int = 3, async_save: bool = True):
        if keep < 1:
            raise ValueError(f"Checkpointer: keep must be >= 1, got {keep}.")
        self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
        self.corrupt_directory = os.path.abspath(os.path.join(workdir, "checkpoints_corrupt"))
        self.every_steps = int(every_steps or 0)
        self.every_secs = every_secs
        self.keep = keep
        self._async = async_save
        self._last_save_time = time.monotonic()
        self._manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, create=True, enable_async_checkpointing=self._async,
            cleanup_tmp_directories=True)
        return ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))

    def all_steps(self) -> list[int]:
        """Steps with a finalised checkpoint directory, ascending."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        """True at multiples of `every_steps`, or when `every_secs` elapsed since the last save."""
        if self.every_steps and step % self.every_steps == 0:
            return True
        return self.every_secs is not None and time.monotonic() - self._last_save_time >= self.every_secs

    def save(self, step: int, state: Any, meta: dict | None = None) -> None:
        """Starts saving `state` as checkpoint `step` (asynchronous; replaces nothing).

        Args:
          step: the number of completed steps the state corresponds to.
          state: pytree (a `TrainState`).
          meta: JSON-serialisable extra data (e.g. ``{"config": config.to_dict()}``).
        """
        step = int(step)
        if step in self._manager.all_steps():
            return
        meta = {"step": step, "data_position": {"step": step}, "time": time.time(), **(meta or {})}
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(to_savable(state)),
                                    meta=ocp.args.JsonSave(meta)),
            force=True)
        self._last_save_time = time.monotonic()

    def restore(self, step: int, template: Any) -> tuple[Any, dict]:
        """Reads checkpoint `step` into the structure and shardings of `template`."""
        self.wait()
        paths, leaves, _ = _leaf_paths(template)
        abstract = _nest(paths, [_abstract(x) for x in leaves])
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                          meta=ocp.args.JsonRestore()))
        return from_savable(template, restored["state"]), dict(restored["meta"])

    def restore_latest(self, template: Any) -> tuple[Any, dict | None]:
        """The newest readable checkpoint, or (`template`, None) when there is none.

        Unreadable steps are logged (warning), moved to ``checkpoints_corrupt/`` and skipped.

        Returns:
          (state, meta): the restored state and its JSON metadata.
        """
        self.wait()
        moved = False
        result: tuple[Any, dict | None] = (template, None)
        for step in reversed(self.all_steps()):
            try:
                result = self.restore(step, template)
                break
            except Exception as e:  # orbax raises many types for damaged directories
                dest = os.path.join(self.corrupt_directory, f"{step}-{int(time.time())}")
                log.warning("checkpoint step %d in %s is unreadable (%s: %s); moving it to %s and "
                            "trying the previous checkpoint.", step, self.directory,
                            type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "", dest)
                if jax.process_index() == 0:
                    os.makedirs(self.corrupt_directory, exist_ok=True)
                    shutil.move(os.path.join(self.directory, str(step)), dest)
                moved = True
        if moved:
            self._manager.close()
            self._manager = self._new_manager()
        self._last_save_time = time.monotonic()
        return result

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
