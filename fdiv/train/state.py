"""Train state for experiments with several networks, each with its own optax optimiser.

A `Net` is one Flax NNX module taken apart with `nnx.split` into its static graph
definition, its trainable parameters (`nnx.Param`) and the rest of its state (batch
statistics, RNG counters), plus the optimiser (an `optax.GradientTransformation`, static)
and its state. A `TrainState` holds a dict of named `Net`s, the completed-step counter and
the base PRNG key. Both are pytrees whose static parts (graph definitions, optimisers) live
in the treedef, so a state can be passed straight into `jax.jit`-ed pure functions; DESIGN.md
measured split/merge + `jax.jit` to be faster than `nnx.jit` for small networks.

Usage (several networks updated at different rates)::

    state = TrainState.create(
        seed=config.seed,
        generator=Net.create(gen_module, optax.adam(1e-4), ema_decay=0.999),
        fake_score=Net.create(fake_module, optax.adam(1e-4)),
        teacher=Net.create(teacher_module),            # frozen: no optimiser
    )

    @jax.jit
    def fake_step(state, batch):
        key = state.step_key("fake")                   # fold_in(rng, step, "fake")
        def loss_fn(params):
            model = state.nets["fake_score"].merge(params)
            teacher = state.nets["teacher"].merge()
            ...
            return loss, aux
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.nets["fake_score"].params)
        return state.apply_gradients(fake_score=grads), {"fake_loss": loss}

    def step_fn(state, step):                           # host side: picks what runs
        state, metrics = fake_step(state, batcher(step))
        if step % 5 == 0:                               # generator every 5th step
            state, gen_metrics = gen_step(state, batcher(step))
            metrics = {**metrics, **gen_metrics}
        return state, metrics

`TrainState.step` counts completed loop steps and is advanced by the loop
(`fdiv.train.loop.fit`), not by `apply_gradients`, so a loop step may call any number of
update functions; each optimiser keeps its own update count in its state.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx, struct


@struct.dataclass
class Net:
    """One network: NNX graph definition, parameters, other state, optimiser and its state.

    Attributes:
      graphdef: static `nnx.GraphDef` of the module.
      params: `nnx.State` of the trainable `nnx.Param` variables.
      rest: `nnx.State` of every other variable (batch statistics, RNG streams); may be empty.
      opt_state: optimiser state, or None for a frozen network.
      ema_params: exponential moving average of `params` (same structure), or None.
      tx: static `optax.GradientTransformation`, or None for a frozen network.
      ema_decay: static float in [0, 1), or None when no average is kept.
    """

    graphdef: Any = struct.field(pytree_node=False)
    params: Any
    rest: Any
    opt_state: Any
    ema_params: Any
    tx: Any = struct.field(pytree_node=False)
    ema_decay: Any = struct.field(pytree_node=False)

    @classmethod
    def create(
        cls,
        module: nnx.Module,
        tx: optax.GradientTransformation | None = None,
        *,
        ema_decay: float | None = None,
    ) -> "Net":
        """Splits `module` and initialises the optimiser.

        Args:
          module: an initialised `nnx.Module`.
          tx: optax optimiser; None makes the network frozen (e.g. a teacher).
          ema_decay: keep an exponential moving average of the parameters with this decay
            (updated after every `apply_gradients`); None keeps none.

        Returns:
          A `Net`.

        Raises:
          ValueError: if `ema_decay` is outside [0, 1), or given for a frozen network.
        """
        if ema_decay is not None:
            if not 0.0 <= float(ema_decay) < 1.0:
                raise ValueError(f"Net.create: ema_decay must lie in [0, 1), got {ema_decay}.")
            if tx is None:
                raise ValueError(
                    "Net.create: ema_decay needs an optimiser (tx); a frozen network has no average."
                )
            ema_decay = float(ema_decay)
        graphdef, params, rest = nnx.split(module, nnx.Param, ...)
        opt_state = None if tx is None else tx.init(params)
        ema = None if ema_decay is None else jax.tree.map(jnp.copy, params)
        return cls(graphdef, params, rest, opt_state, ema, tx, ema_decay)

    @property
    def trainable(self) -> bool:
        """Whether the network has an optimiser."""
        return self.tx is not None

    def merge(self, params: Any = None, *, ema: bool = False) -> nnx.Module:
        """Rebuilds the module, optionally with other parameters (e.g. those being differentiated).

        Args:
          params: parameters to use instead of `self.params` (same structure).
          ema: use the moving-average parameters (ignored when `params` is given).
        """
        if params is None:
            if ema:
                if self.ema_params is None:
                    raise ValueError(
                        "Net.merge: ema=True but this network keeps no average; "
                        "create it with Net.create(..., ema_decay=0.999)."
                    )
                params = self.ema_params
            else:
                params = self.params
        # copy=True: variables are created at the caller's trace level (inside jax.grad), so
        # stateful layers (dropout RNG counters, batch stats) can update them there.
        return nnx.merge(self.graphdef, params, self.rest, copy=True)

    def freeze(self, params: Any = None) -> "Net":
        """The same network without optimiser and average, e.g. a trained teacher or
        classifier used for inference.

        Args:
          params: parameters to keep instead of `self.params` (same structure), e.g.
            ``net.ema_params``.
        """
        return Net(
            self.graphdef,
            self.params if params is None else params,
            self.rest,
            None,
            None,
            None,
            None,
        )

    def with_module(self, module: nnx.Module) -> "Net":
        """Re-reads params and rest from `module` (after a call that changed its state,
        e.g. batch statistics or RNG counters); the optimiser state is kept."""
        _, params, rest = nnx.split(module, nnx.Param, ...)
        return self.replace(params=params, rest=rest)

    def apply_gradients(self, grads: Any) -> "Net":
        """One optimiser update with `grads` (same structure as `params`); updates the EMA.

        Raises:
          ValueError: if the network is frozen.
        """
        if self.tx is None:
            raise ValueError(
                "Net.apply_gradients: this network is frozen (created without tx); "
                "pass an optax optimiser to Net.create to train it."
            )
        updates, opt_state = self.tx.update(grads, self.opt_state, self.params)
        params = optax.apply_updates(self.params, updates)
        ema = self.ema_params
        if ema is not None:
            # ema <- decay * ema + (1 - decay) * params
            ema = optax.incremental_update(params, ema, 1.0 - self.ema_decay)
        return self.replace(params=params, opt_state=opt_state, ema_params=ema)

    def num_params(self) -> int:
        """Number of trainable scalars."""
        return int(sum(np.prod(x.shape) for x in jax.tree.leaves(self.params)))


@struct.dataclass
class TrainState:
    """Everything a run needs to continue exactly: networks, step counter, base PRNG key.

    Attributes:
      step: int32 scalar, number of completed loop steps.
      rng: base typed PRNG key (from `config.seed`); per-step keys are derived from it by
        `step_key`, so randomness is a pure function of (seed, step).
      nets: dict name -> `Net`.
    """

    step: Any
    rng: Any
    nets: dict[str, Net]

    @classmethod
    def create(cls, seed: int | jax.Array, **nets: Net) -> "TrainState":
        """A state at step 0 with base key `jax.random.key(seed)` (or the given key)."""
        if not nets:
            raise ValueError(
                "TrainState.create: pass at least one network, e.g. model=Net.create(module, tx)."
            )
        for name, net in nets.items():
            if not isinstance(net, Net):
                raise ValueError(
                    f"TrainState.create: {name!r} is a {type(net).__name__}, expected fdiv.train.Net."
                )
        if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            rng = seed
        else:
            rng = jax.random.key(int(seed))
        return cls(step=jnp.zeros((), jnp.int32), rng=rng, nets=dict(nets))

    def __getitem__(self, name: str) -> Net:
        try:
            return self.nets[name]
        except KeyError:
            raise KeyError(f"no network {name!r}; networks: {sorted(self.nets)}") from None

    def step_key(self, *tags: str | int) -> jax.Array:
        """PRNG key for the current step, `fold_in(rng, step)` then one fold per tag.

        Tags separate independent streams within a step (``state.step_key("gen")``); strings
        are folded in through a stable hash of their bytes, so keys are reproducible across
        processes and Python versions.
        """
        key = jax.random.fold_in(self.rng, self.step)
        for tag in tags:
            key = jax.random.fold_in(key, _tag_to_int(tag))
        return key

    def apply_gradients(self, **grads: Any) -> "TrainState":
        """Updates the named networks: ``state.apply_gradients(generator=g, critic=c)``."""
        nets = dict(self.nets)
        for name, g in grads.items():
            nets[name] = self[name].apply_gradients(g)
        return self.replace(nets=nets)

    def replace_net(self, name: str, net: Net) -> "TrainState":
        """A state with network `name` replaced (e.g. after `Net.with_module`)."""
        self[name]
        return self.replace(nets={**self.nets, name: net})


def _tag_to_int(tag: str | int) -> int:
    if isinstance(tag, int):
        return tag
    # FNV-1a, 31 bits: deterministic, unlike Python's salted str hash.
    h = 0x811C9DC5
    for b in str(tag).encode():
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h & 0x7FFFFFFF
