"""Deterministic batching: every batch is a pure function of (seed, step).

A resumed run therefore sees exactly the batches it would have seen without the interruption,
and the checkpointed step is the whole data-pipeline state.

* `epoch_permutation(seed, epoch, n)`: the shuffling order of one epoch.
* `ArrayBatcher(arrays, batch_size, seed, mesh=None)`: shuffled fixed-size batches of
  in-memory arrays, with ``host_batch(step)`` (this process's numpy slice) and
  ``__call__(step)`` (global device arrays split over the mesh's ``'data'`` axis).
* `TextBatcher`: random windows of a token stream (inputs and next-token targets).
* `eval_batches(arrays, batch_size)`: one full ordered pass with padding masks.
* `shard_batch(batch, mesh)`: places a host batch on a mesh, split along its leading axis.

Placement lives here rather than in `fdiv.train` so that the data package never imports the
training package (the data flows into training, not the other way).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

DATA_AXIS = "data"


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
    """Places a host batch on `mesh`, split along the leading (batch) axis ``'data'``.

    Args:
      batch: pytree of numpy/JAX arrays with a common leading axis. In a single-process run
        this is the global batch; in a multi-process run it is this process's slice (all
        processes call `shard_batch` with slices of equal size, in process order).
      mesh: a mesh with a ``'data'`` axis (e.g. ``fdiv.train.sharding.make_mesh()``).

    Returns:
      Pytree of global `jax.Array`s with sharding ``NamedSharding(mesh, PartitionSpec('data'))``.

    Raises:
      ValueError: if a leaf is a scalar, or its leading axis is not divisible by the number
        of local devices of the mesh (choose a batch size that is a multiple of
        ``jax.local_device_count()``).
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    n_local = len([d for d in mesh.devices.flat if d.process_index == jax.process_index()])

    def place(path, x):
        x = np.asarray(x) if not isinstance(x, jax.Array) else x
        if x.ndim == 0:
            raise ValueError(
                f"shard_batch: leaf {jax.tree_util.keystr(path)} is a scalar; every batch leaf "
                "needs a leading batch axis."
            )
        if x.shape[0] % n_local:
            raise ValueError(
                f"shard_batch: leaf {jax.tree_util.keystr(path)} has leading axis {x.shape[0]} "
                f"(shape {tuple(x.shape)}), not divisible by the {n_local} local devices; use a "
                f"batch size that is a multiple of {n_local}."
            )
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        return jax.make_array_from_process_local_data(sharding, np.asarray(x))

    return jax.tree_util.tree_map_with_path(place, batch)


def _to_device(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    if mesh is None:
        return jax.tree.map(jnp.asarray, batch)
    return shard_batch(batch, mesh)


def epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    """The shuffling order of epoch `epoch`: a permutation of range(n), pure in (seed, epoch)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


class ArrayBatcher:
    """Shuffled fixed-size batches of in-memory arrays; batch `step` depends only on (seed, step).

    Epoch e = step // steps_per_epoch uses `epoch_permutation(seed, e, N)`; the incomplete
    last batch of an epoch is dropped, so every batch has exactly `batch_size` examples.

    Args:
      arrays: name -> numpy array, all with the same leading size N.
      batch_size: global batch size (over all processes and devices).
      seed: shuffling seed.
      mesh: if given, `__call__` returns arrays sharded over its ``'data'`` axis.

    Raises:
      ValueError: on mismatched leading sizes, ``batch_size > N``, or a batch size not divisible
        by the number of processes.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int, *, mesh=None):
        sizes = {k: np.shape(v)[0] for k, v in arrays.items()}
        if not sizes or len(set(sizes.values())) != 1:
            raise ValueError(f"ArrayBatcher: arrays need one common leading size, got {sizes}.")
        self.arrays = {k: np.asarray(v) for k, v in arrays.items()}
        self.size = next(iter(sizes.values()))
        if not 0 < batch_size <= self.size:
            raise ValueError(
                f"ArrayBatcher: batch_size must lie in [1, {self.size}], got {batch_size}."
            )
        if batch_size % jax.process_count():
            raise ValueError(
                f"ArrayBatcher: batch_size {batch_size} is not divisible by the "
                f"{jax.process_count()} processes."
            )
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.mesh = mesh
        self.steps_per_epoch = self.size // self.batch_size
        # One-epoch cache of the permutation; the output never depends on it.
        self._perm: tuple[int, np.ndarray] | None = None

    def epoch(self, step: int) -> int:
        return int(step) // self.steps_per_epoch

    def indices(self, step: int) -> np.ndarray:
        """Global example indices [batch_size] of batch `step`."""
        epoch, pos = divmod(int(step), self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            self._perm = (epoch, epoch_permutation(self.seed, epoch, self.size))
        return self._perm[1][pos * self.batch_size : (pos + 1) * self.batch_size]

    def host_batch(self, step: int) -> dict[str, np.ndarray]:
        """This process's slice of batch `step` (the whole batch on a single host), numpy."""
        idx = self.indices(step)
        per = self.batch_size // jax.process_count()
        idx = idx[jax.process_index() * per : (jax.process_index() + 1) * per]
        return {k: v[idx] for k, v in self.arrays.items()}

    def __call__(self, step: int) -> dict[str, jax.Array]:
        """Batch `step` as device arrays (sharded over the mesh's data axis when given a mesh)."""
        return _to_device(self.host_batch(step), self.mesh)


class TextBatcher:
    """Random windows of a token stream: ``{"inputs": [B, T], "targets": [B, T]}``.

    Targets are the inputs shifted by one token. Window starts for batch `step` are drawn from
    ``default_rng([seed, step])``, so batches are a pure function of (seed, step).
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int, *, mesh=None):
        tokens = np.asarray(tokens)
        if tokens.ndim != 1:
            raise ValueError(f"TextBatcher: tokens must be 1-D, got shape {tokens.shape}.")
        if not 0 < seq_len < len(tokens):
            raise ValueError(
                f"TextBatcher: seq_len must lie in [1, {len(tokens) - 1}], got {seq_len}."
            )
        if batch_size < 1 or batch_size % jax.process_count():
            raise ValueError(
                "TextBatcher: batch_size must be a positive multiple of the "
                f"{jax.process_count()} processes, got {batch_size}."
            )
        self.tokens = tokens
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = int(seed)
        self.mesh = mesh

    def host_batch(self, step: int) -> dict[str, np.ndarray]:
        starts = np.random.default_rng([self.seed, int(step)]).integers(
            0, len(self.tokens) - self.seq_len, size=self.batch_size
        )
        per = self.batch_size // jax.process_count()
        starts = starts[jax.process_index() * per : (jax.process_index() + 1) * per]
        windows = self.tokens[starts[:, None] + np.arange(self.seq_len + 1)]
        return {"inputs": windows[:, :-1], "targets": windows[:, 1:]}

    def __call__(self, step: int) -> dict[str, jax.Array]:
        return _to_device(self.host_batch(step), self.mesh)


def eval_batches(
    arrays: Mapping[str, np.ndarray], batch_size: int
) -> Iterator[dict[str, np.ndarray]]:
    """One ordered pass over `arrays` in batches of exactly `batch_size` (host numpy).

    The last batch is padded by repeating the first example; every batch carries a float32
    ``"mask"`` [batch_size] that is 1 for real examples and 0 for padding, so metrics are
    ``sum(metric * mask) / sum(mask)`` and every batch has one shape (one compilation).
    """
    n = np.shape(next(iter(arrays.values())))[0]
    for start in range(0, n, batch_size):
        idx = np.arange(start, start + batch_size)
        mask = (idx < n).astype(np.float32)
        idx = np.where(idx < n, idx, 0)
        yield {**{k: np.asarray(v)[idx] for k, v in arrays.items()}, "mask": mask}
