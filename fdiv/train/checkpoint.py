"""Orbax checkpoints of a whole training state: exact resume, integrity checks, config checks.

`Checkpointer` wraps `orbax.checkpoint.CheckpointManager` (``args`` API). Each checkpoint is a
step directory ``<workdir>/checkpoints/<step>/`` holding two items:

- ``state``: every array leaf of the state pytree (`fdiv.train.TrainState`: parameters,
  optimiser states, EMA, step counter, PRNG key), saved with `ocp.args.StandardSave` as a
  nested dict keyed by the leaves' pytree paths. Typed PRNG keys are stored as their raw
  key data and re-wrapped on restore.
- ``meta``: JSON (`ocp.args.JsonSave`) with the step, the data-pipeline position, any
  caller-supplied metadata (the run's config under ``"config"``), and two integrity records
  written at save time: ``"state_structure"`` (leaf path -> [shape, dtype]) and
  ``"state_crc32"`` (leaf path -> CRC-32 of the leaf's bytes).

Because the data pipeline is a pure function of (seed, step) (`fdiv.data`), the step is the
complete data-iterator position, and resuming reproduces an uninterrupted run bit for bit.

Saving policy (`should_save`): every `every_steps` steps, and whenever `every_secs` of wall time
have passed since the last save; the last `keep` checkpoints are kept. Saves are asynchronous;
`wait` (called by `restore_latest` and `close`) blocks until they are on disk.

Restoring (`restore_latest(template, config=...)`) distinguishes two situations:

- *A different run* (`ConfigMismatchError`, raised before anything on disk is touched): a
  readable step whose stored config differs from `config` (fields that only schedule
  bookkeeping, `RESUME_NEUTRAL_FIELDS`, are ignored), or whose stored state structure (leaf
  paths, shapes, dtypes) differs from `template`. Such checkpoints are valid; the message
  names the differing fields and the two ways on (a new workdir, or ``resume="restart"``
  which makes `fdiv.train.fit` archive the old run under ``<workdir>/archive/``).
- *A damaged step*: missing or truncated files, unreadable metadata, or a leaf whose CRC-32
  differs from the one recorded at save time. It is reported in one warning line, moved
  aside to ``<workdir>/checkpoints_corrupt/<step>-<unix time>/`` (kept, not deleted), and the
  next older step is tried.

Orbax's own temporary directories of interrupted saves are never considered steps.

Usage::

    ckpt = Checkpointer(workdir, every_steps=1000, every_secs=600, keep=3)
    state, meta = ckpt.restore_latest(state, config=config.to_dict())   # state: template
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
import zlib
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

_SAFE = re.compile(r"[^A-Za-z0-9_]")

# Config fields that only schedule logging, evaluation and saving (or say how to resume):
# changing them between runs of one workdir does not change the trained numbers.
RESUME_NEUTRAL_FIELDS = frozenset(
    {
        "log_every",
        "eval_every",
        "checkpoint_every_steps",
        "checkpoint_every_secs",
        "keep_checkpoints",
        "async_checkpoints",
        "resume",
    }
)


class ConfigMismatchError(ValueError):
    """The workdir holds valid checkpoints of a different run (other config or state structure).

    Attributes:
      directory: the checkpoint directory.
      differences: list of ``(field, old, new)``; ``field`` is a dotted config path or
        ``"state:<leaf path>"`` for a structure difference.
    """

    def __init__(self, message: str, *, directory: str, differences: list[tuple[str, Any, Any]]):
        super().__init__(message)
        self.directory = directory
        self.differences = differences


class DamagedCheckpointError(ValueError):
    """A checkpoint step whose data does not match what was recorded when it was saved."""


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
        raise ValueError(
            "Checkpointer: two leaves of the state map to the same checkpoint key "
            "after sanitising their pytree paths; rename the offending dict keys."
        )
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
            raise ValueError(
                f"checkpoint has no leaf {'/'.join(path)}; the state structure changed "
                "since it was written (different networks or optimisers)."
            ) from None
        if _is_key(t):
            x = jax.random.wrap_key_data(x, impl=jax.random.key_impl(t))
        elif tuple(x.shape) != tuple(np.shape(t)):
            raise ValueError(
                f"checkpoint leaf {'/'.join(path)} has shape {tuple(x.shape)}, the state "
                f"expects {tuple(np.shape(t))}; the model changed since it was written."
            )
        out.append(x)
    return jax.tree_util.tree_unflatten(treedef, out)


# --------------------------------------------------------------------------- integrity records


def _leaf_name(path: tuple[str, ...]) -> str:
    return "/".join(path)


def _host_value(x: Any) -> np.ndarray:
    """The full value of a leaf on this host (a leaf split across processes is gathered)."""
    if isinstance(x, jax.Array) and not (x.is_fully_addressable or x.is_fully_replicated):
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def _crc32(a: np.ndarray) -> str:
    a = np.ascontiguousarray(a)
    return f"{zlib.crc32(a.tobytes()) & 0xFFFFFFFF:08x}"


def state_structure(tree: Any) -> dict[str, list]:
    """Leaf path -> ``[shape, dtype name]`` of a state as it is saved (keys as key data)."""
    paths, leaves, _ = _leaf_paths(tree)
    out = {}
    for path, x in zip(paths, leaves):
        if _is_key(x):
            x = jax.random.key_data(x)
        out[_leaf_name(path)] = [list(np.shape(x)), np.dtype(x.dtype).name]
    return out


def state_checksums(savable: dict) -> dict[str, str]:
    """Leaf path -> CRC-32 (hex) of the leaf's bytes, for a nested dict from `to_savable`."""
    leaves_with_path = jax.tree_util.tree_flatten_with_path(savable)[0]
    names = [_leaf_name(tuple(str(e.key) for e in p)) for p, _ in leaves_with_path]
    values = [x for _, x in leaves_with_path]
    return {n: _crc32(_host_value(v)) for n, v in zip(names, values)}


def _normalise(x: Any) -> Any:
    """A JSON round trip's view of a value (tuples become lists, keys strings)."""
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _normalise(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_normalise(v) for v in x]
    if isinstance(x, (np.generic, np.ndarray)):
        return np.asarray(x).tolist()
    return x


def _flatten(x: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(x, Mapping):
        out: dict[str, Any] = {}
        for k, v in x.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        if not x and prefix:
            out[prefix] = {}
        return out
    return {prefix: x}


_ABSENT = "<absent>"


def config_differences(old: Any, new: Any) -> list[tuple[str, Any, Any]]:
    """``(dotted field, old value, new value)`` for every field that differs, sorted by name;
    fields in `RESUME_NEUTRAL_FIELDS` (at any depth) are ignored."""
    a, b = _flatten(_normalise(old)), _flatten(_normalise(new))
    out = []
    for k in sorted(set(a) | set(b)):
        if k.rsplit(".", 1)[-1] in RESUME_NEUTRAL_FIELDS:
            continue
        va, vb = a.get(k, _ABSENT), b.get(k, _ABSENT)
        if va != vb:
            out.append((k, va, vb))
    return out


def _structure_differences(old: Mapping, new: Mapping) -> list[tuple[str, Any, Any]]:
    def fmt(v):
        return _ABSENT if v is None else f"{list(v[0])} {v[1]}"

    return [
        (f"state:{k}", fmt(old.get(k)), fmt(new.get(k)))
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


def _short(v: Any, width: int = 40) -> str:
    s = str(v)
    return s if len(s) <= width else s[: width - 3] + "..."


_OBJECT_REPR = re.compile(r"<[^<>]*\bat 0x[0-9a-fA-F]+>|\bobject at 0x[0-9a-fA-F]+")


def _one_line(e: BaseException, width: int = 200) -> str:
    """``Type: first line of the message`` without object reprs, at most `width` characters."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = re.sub(r"\s+", " ", _OBJECT_REPR.sub("", text)).strip(" :,")
    line = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return line if len(line) <= width else line[: width - 3] + "..."


class Checkpointer:
    """Periodic, asynchronous, keep-last-k checkpoints of a state pytree in `workdir`.

    Args:
      workdir: run directory; checkpoints go to ``<workdir>/checkpoints``.
      every_steps: save when ``step % every_steps == 0`` (0 or None: never by step count).
      every_secs: also save when this many seconds passed since the last save (None: never).
      keep: number of most recent checkpoints to keep.
      async_save: write in a background thread (`wait` blocks until done).
    """

    def __init__(
        self,
        workdir: str,
        *,
        every_steps: int | None = 1000,
        every_secs: float | None = None,
        keep: int = 3,
        async_save: bool = True,
    ):
        if keep < 1:
            raise ValueError(f"Checkpointer: keep must be >= 1, got {keep}.")
        self.workdir = os.path.abspath(workdir)
        self.directory = os.path.join(self.workdir, "checkpoints")
        self.corrupt_directory = os.path.join(self.workdir, "checkpoints_corrupt")
        self.every_steps = int(every_steps or 0)
        self.every_secs = every_secs
        self.keep = keep
        self._async = async_save
        self._last_save_time = time.monotonic()
        self._manager = self._new_manager()

    def _new_manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep,
            create=True,
            enable_async_checkpointing=self._async,
            cleanup_tmp_directories=True,
        )
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
        return (
            self.every_secs is not None
            and time.monotonic() - self._last_save_time >= self.every_secs
        )

    def save(self, step: int, state: Any, meta: dict | None = None) -> None:
        """Starts saving `state` as checkpoint `step` (asynchronous; replaces nothing).

        The step's metadata records the state's structure and a CRC-32 of every leaf, which
        `restore` verifies.

        Args:
          step: the number of completed steps the state corresponds to.
          state: pytree (a `TrainState`).
          meta: JSON-serialisable extra data (e.g. ``{"config": config.to_dict()}``).
        """
        step = int(step)
        if step in self._manager.all_steps():
            return
        savable = to_savable(state)
        meta = {
            "step": step,
            "data_position": {"step": step},
            "time": time.time(),
            **_normalise(dict(meta or {})),
            "state_structure": state_structure(state),
            "state_crc32": state_checksums(savable),
        }
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(savable), meta=ocp.args.JsonSave(meta)
            ),
            force=True,
        )
        self._last_save_time = time.monotonic()

    def read_meta(self, step: int) -> dict:
        """The JSON metadata of checkpoint `step` (raises when it cannot be read)."""
        restored = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        meta = restored["meta"]
        if not isinstance(meta, Mapping):
            raise DamagedCheckpointError(f"metadata of step {step} is not a JSON object")
        return dict(meta)

    def _mismatch(self, step: int, meta: Mapping, template: Any, config: Any):
        config_diffs = []
        if config is not None and "config" in meta:
            config_diffs = config_differences(meta["config"], config)
        structure_diffs = []
        if "state_structure" in meta:
            structure_diffs = _structure_differences(
                meta["state_structure"], state_structure(template)
            )
        if not config_diffs and not structure_diffs:
            return None

        def listing(diffs, limit, name=lambda k: k):
            shown = ", ".join(f"{name(k)} {_short(a)} -> {_short(b)}" for k, a, b in diffs[:limit])
            return shown + (f" and {len(diffs) - limit} more" if len(diffs) > limit else "")

        parts = []
        if config_diffs:
            parts.append("config field(s) differ: " + listing(config_diffs, 6))
        if structure_diffs and config_diffs:
            parts.append("the state structure differs with them")
        elif structure_diffs:
            leaf = lambda k: k[len("state:") :].removeprefix("nets/").removesuffix("/value")
            parts.append("state structure differs: " + listing(structure_diffs, 2, leaf))
        return ConfigMismatchError(
            f"{self.directory} holds checkpoints of a different run (step {step}; "
            f"{'; '.join(parts)}); they are valid and were left untouched. Either use a new "
            f"--workdir, or pass --config.resume=restart to move the old run to "
            f"{os.path.join(self.workdir, 'archive', '<UTC time>')}/ and start afresh.",
            directory=self.directory,
            differences=config_diffs + structure_diffs,
        )

    def restore(self, step: int, template: Any, *, meta: dict | None = None) -> tuple[Any, dict]:
        """Reads checkpoint `step` into the structure and shardings of `template`.

        Raises:
          ConfigMismatchError: the stored state structure differs from `template`.
          DamagedCheckpointError: a leaf's CRC-32 differs from the one recorded at save time.
          Exception: whatever orbax raises for missing or truncated files.
        """
        self.wait()
        if meta is None:
            meta = self.read_meta(step)
        error = self._mismatch(step, meta, template, None)
        if error is not None:
            raise error
        paths, leaves, _ = _leaf_paths(template)
        abstract = _nest(paths, [_abstract(x) for x in leaves])
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )["state"]
        expected = meta.get("state_crc32")
        if expected is not None:
            got = state_checksums(restored)
            bad = sorted(k for k in set(expected) | set(got) if expected.get(k) != got.get(k))
            if bad:
                more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
                raise DamagedCheckpointError(f"checksum mismatch in leaf {bad[0]}{more}")
        return from_savable(template, restored), meta

    def read_arrays(self, step: int) -> dict[str, np.ndarray]:
        """The leaves of checkpoint `step` as host arrays keyed by leaf path, without a
        template (for inspection and comparisons; needs a checkpoint written with
        ``"state_structure"`` metadata). Checksums are verified."""
        self.wait()
        meta = self.read_meta(step)
        structure = meta.get("state_structure")
        if structure is None:
            raise ValueError(
                f"checkpoint step {step} in {self.directory} records no state "
                "structure; restore it with restore(step, template)."
            )
        one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        paths = [tuple(k.split("/")) for k in structure]
        abstract = _nest(
            paths,
            [
                jax.ShapeDtypeStruct(tuple(shape), np.dtype(dtype), sharding=one_device)
                for shape, dtype in structure.values()
            ],
        )
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )["state"]
        got = state_checksums(restored)
        bad = sorted(k for k in got if meta["state_crc32"].get(k) != got[k])
        if bad:
            raise DamagedCheckpointError(f"checksum mismatch in leaf {bad[0]}")
        return {"/".join(p): np.asarray(_get(restored, p)) for p in paths}

    def restore_latest(self, template: Any, config: Any = None) -> tuple[Any, dict | None]:
        """The newest intact checkpoint, or (`template`, None) when there is none.

        Args:
          template: state giving the structure, key types and shardings.
          config: the config of the run being started (a mapping or ConfigDict), compared with
            each step's stored ``meta["config"]``; None skips the comparison.

        Returns:
          (state, meta): the restored state and its JSON metadata.

        Raises:
          ConfigMismatchError: some readable step was written by a run with another config or
            state structure. Raised before any step is moved or restored.
        """
        self.wait()
        steps = list(reversed(self.all_steps()))
        metas: dict[int, dict | BaseException] = {}
        for step in steps:
            try:
                metas[step] = self.read_meta(step)
            except Exception as e:  # orbax raises many types for damaged directories
                metas[step] = e
        for step in steps:
            meta = metas[step]
            if isinstance(meta, dict):
                error = self._mismatch(step, meta, template, config)
                if error is not None:
                    raise error
        moved = False
        result: tuple[Any, dict | None] = (template, None)
        for step in steps:
            meta = metas[step]
            try:
                if isinstance(meta, BaseException):
                    raise meta
                result = self.restore(step, template, meta=meta)
                break
            except ConfigMismatchError:
                raise
            except Exception as e:  # orbax raises many types for damaged directories
                self._move_aside(step, e)
                moved = True
        if moved:
            self._manager.close()
            self._manager = self._new_manager()
        self._last_save_time = time.monotonic()
        return result

    def _move_aside(self, step: int, error: BaseException) -> None:
        dest = os.path.join(self.corrupt_directory, f"{step}-{int(time.time())}")
        reason = (
            str(error)
            if isinstance(error, DamagedCheckpointError)
            else f"unreadable, {_one_line(error)}"
        )
        log.warning(
            "checkpoint step %d in %s is damaged (%s); moved it to %s and trying the "
            "previous step.",
            step,
            self.directory,
            reason,
            dest,
        )
        if jax.process_index() == 0:
            os.makedirs(self.corrupt_directory, exist_ok=True)
            shutil.move(os.path.join(self.directory, str(step)), dest)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"fdiv_checkpoint_move_{step}")

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
