"""Training utilities: multi-network state, sharding, checkpoints, the loop, metrics, plots.

Public API (import as ``from fdiv import train`` or from the submodules):

State (`fdiv.train.state`)
  ``Net.create(module, tx=None, *, ema_decay=None) -> Net``
      one NNX module split into ``graphdef`` (static), ``params`` (nnx.Param state), ``rest``
      (other variables), with its own optax optimiser ``tx`` (None: frozen, e.g. a teacher)
      and optional parameter EMA. Methods: ``merge(params=None, *, ema=False) -> module``,
      ``apply_gradients(grads) -> Net``, ``with_module(module) -> Net`` (re-read state after
      a call that mutated batch stats / RNG counters), ``freeze(params=None) -> Net`` (the
      same network without optimiser state or EMA, e.g. a trained teacher with its EMA
      parameters), ``num_params()``, ``trainable``.
  ``TrainState.create(seed, **nets) -> TrainState``
      fields ``step`` (completed loop steps), ``rng`` (base typed key), ``nets`` (dict).
      ``state["name"]``, ``state.apply_gradients(name=grads, ...)``,
      ``state.replace_net(name, net)``, ``state.step_key(*tags)`` = fold_in(rng, step, tags).

Loop (`fdiv.train.loop`, `fdiv.train.config`)
  ``LoopOptions(num_steps, log_every=100, eval_every=0, checkpoint_every_steps=1000,
  checkpoint_every_secs=600.0, keep_checkpoints=3, async_checkpoints=True, resume="auto")``;
  ``LoopOptions.from_config(config)`` reads those names from the top level of a config.
  ``fit(state, step_fn, *, workdir, options, eval_fn=None, meta=None, print_fn=None,
  plot=True, banner=None, phase=None) -> (state, summary)`` with ``step_fn(state, step) ->
  (state, metrics)`` (host side; calls jitted update functions, so networks can be updated
  at different rates) and ``eval_fn(state) -> metrics``. Resumes from the newest intact
  checkpoint, logs, evaluates, checkpoints, writes ``curves.png`` and ``summary.json``
  (a rerun of a finished run writes ``summary_reeval.json`` beside it). ``resume="restart"``
  archives a previous run to ``<workdir>/archive/<UTC time>/`` first.
  ``TrainingInterrupted`` (a KeyboardInterrupt with ``.step``, ``.workdir``): Ctrl-C, after
  the checkpoint was saved.
  ``check_config(config)`` (NaN -> ValueError), ``to_dataclass(Cls, config)`` (typed config).

Sharding (`fdiv.train.sharding`)
  ``maybe_initialize_distributed()`` (also called by ``make_mesh()``), ``make_mesh()`` (axis
  ``'data'``, over the devices of all processes),
  ``replicate(tree, mesh)``, ``shard_batch(batch, mesh)``, ``data_sharding(mesh)``,
  ``replicated_sharding(mesh)``.

Checkpoints (`fdiv.train.checkpoint`)
  ``Checkpointer(workdir, *, every_steps, every_secs, keep, async_save)`` with ``save(step,
  state, meta)``, ``restore_latest(template, config=None) -> (state, meta | None)``,
  ``restore(step, template)``, ``read_meta(step)``, ``read_arrays(step)`` (leaves as host
  arrays, no template needed), ``should_save(step)``, ``all_steps()``, ``wait()``,
  ``close()``. Every leaf's
  CRC-32 is stored at save time and verified on restore (a mismatch is a damaged step:
  warned, moved to ``checkpoints_corrupt/``, the previous step is used).
  ``ConfigMismatchError`` (a ValueError): the workdir holds valid checkpoints of another
  config or state structure; raised by ``restore_latest(template, config)`` before anything
  is touched, naming the fields and the two ways on.

Metric writers and plots (`fdiv.train.writers`, formerly `fdiv.train.metrics`;
`fdiv.train.plotting`)
  ``MetricWriter(workdir, num_steps)`` (80-column progress line, ``metrics.jsonl`` with
  ``num_steps_averaged`` per training record, TensorBoard if importable),
  ``read_metrics(workdir)``, ``strip_timing(records)``, ``write_summary(workdir, summary)``,
  ``read_summary(workdir)``; ``plot_curves(workdir)``, ``save_image_grid(images,
  path)``, ``save_scatter(points, path, reference=None, centres=None)``.

An experiment with several networks, e.g. f-distill (docs/reference.md section 4)::

    import jax, optax
    from fdiv import train
    from fdiv.train import sharding

    def train_and_evaluate(config, workdir):
        train.check_config(config)
        mesh = sharding.make_mesh()
        state = train.TrainState.create(
            config.seed,
            generator=train.Net.create(gen, optax.adam(config.lr), ema_decay=0.999),
            fake_score=train.Net.create(fake, optax.adam(config.lr)),
            discriminator=train.Net.create(disc, optax.adam(config.lr)),
            teacher=train.Net.create(teacher))                 # frozen
        state = sharding.replicate(state, mesh)

        @jax.jit                                              # pure: state in, state out
        def critic_step(state, batch):
            key = state.step_key("critic")
            def loss_fn(fake_params, disc_params):
                fake = state["fake_score"].merge(fake_params)
                ...
            (loss, aux), (g_fake, g_disc) = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(
                state["fake_score"].params, state["discriminator"].params)
            return state.apply_gradients(fake_score=g_fake, discriminator=g_disc), {"critic_loss": loss}

        def step_fn(state, step):
            batch = sharding.shard_batch(batcher.host_batch(step), mesh)
            state, metrics = critic_step(state, batch)
            if step % config.generator_every == 0:
                state, gen_metrics = generator_step(state, batch)
                metrics = {**metrics, **gen_metrics}
            return state, metrics

        state, summary = train.fit(state, step_fn, workdir=workdir,
                                   options=train.LoopOptions.from_config(config),
                                   eval_fn=eval_fn, meta={"config": config.to_dict()})
        return summary
"""

from fdiv.train import checkpoint, config, loop, metrics, plotting, sharding, state, writers
from fdiv.train.checkpoint import Checkpointer, ConfigMismatchError
from fdiv.train.config import ConfigError, LoopOptions, check_config, to_dataclass
from fdiv.train.loop import TrainingInterrupted, fit
from fdiv.train.plotting import plot_curves, save_image_grid, save_scatter, save_side_by_side
from fdiv.train.state import Net, TrainState
from fdiv.train.writers import MetricWriter, read_metrics, read_summary, strip_timing, write_summary

__all__ = [
    "Checkpointer",
    "ConfigError",
    "ConfigMismatchError",
    "LoopOptions",
    "MetricWriter",
    "Net",
    "TrainState",
    "TrainingInterrupted",
    "check_config",
    "checkpoint",
    "config",
    "fit",
    "loop",
    "metrics",
    "plot_curves",
    "plotting",
    "read_metrics",
    "read_summary",
    "save_image_grid",
    "save_scatter",
    "save_side_by_side",
    "sharding",
    "state",
    "strip_timing",
    "to_dataclass",
    "write_summary",
    "writers",
]
