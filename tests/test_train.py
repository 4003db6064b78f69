"""Tests of fdiv.train: state, exact resume, corrupt checkpoints, reproducibility, sharding, writers."""

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from fdiv import data as data_lib
from fdiv import train
from fdiv.train import checkpoint as ckpt_lib
from fdiv.train import sharding
from fdiv.train import writers as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One optimiser object for the whole module: it is static in the state's treedef, so reusing
# it lets every fit() below hit the same jit cache.
TX = optax.adam(3e-2)


class TinyMLP(nnx.Module):
    def __init__(self, rngs):
        self.l1 = nnx.Linear(4, 8, rngs=rngs)
        self.l2 = nnx.Linear(8, 1, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)

    def __call__(self, x):
        return self.l2(self.drop(jax.nn.tanh(self.l1(x))))


def make_state(seed=0, mesh=None):
    state = train.TrainState.create(
        seed, model=train.Net.create(TinyMLP(nnx.Rngs(seed)), TX, ema_decay=0.5)
    )
    return sharding.replicate(state, mesh or sharding.make_mesh())


@jax.jit
def update(state, batch):
    noise = jax.random.normal(state.step_key("noise"), batch["y"].shape) * 0.01

    def loss_fn(params):
        model = state["model"].merge(params)
        loss = jnp.mean((model(batch["x"]) - batch["y"] - noise) ** 2)
        return loss, model

    (loss, model), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["model"].params)
    state = state.replace_net("model", state["model"].with_module(model))  # dropout RNG counter
    return state.apply_gradients(model=grads), {"loss": loss}


def make_batcher(seed=0, mesh=None):
    rng = np.random.default_rng(123)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = np.sin(x.sum(1, keepdims=True)).astype(np.float32)
    return data_lib.ArrayBatcher({"x": x, "y": y}, 16, seed, mesh=mesh)


def run(
    workdir,
    num_steps,
    *,
    seed=0,
    ckpt_every=4,
    eval_fn=None,
    lines=None,
    meta=None,
    resume="auto",
    banner=None,
    step_fn=None,
    plot=False,
):
    batcher = make_batcher(seed)
    opts = train.LoopOptions(
        num_steps=num_steps,
        log_every=2,
        checkpoint_every_steps=ckpt_every,
        checkpoint_every_secs=0,
        keep_checkpoints=3,
        eval_every=4,
        resume=resume,
    )
    sink = lines.append if lines is not None else (lambda s: None)
    step_fn = step_fn or (lambda s, step: update(s, batcher(step)))
    return train.fit(
        make_state(seed),
        step_fn,
        workdir=workdir,
        options=opts,
        eval_fn=eval_fn,
        print_fn=sink,
        plot=plot,
        meta=meta,
        banner=banner,
    )


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(ckpt_lib.to_savable(state))]


def assert_identical(s1, s2):
    l1, l2 = leaves(s1), leaves(s2)
    assert len(l1) == len(l2)
    for a, b in zip(l1, l2):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 8-step run, the reference for the resume tests."""
    wd = str(tmp_path_factory.mktemp("straight"))
    state, summary = run(wd, 8)
    return state, summary, wd


# ----------------------------------------------------------------------------------- state


def test_net_apply_gradients_matches_optax_and_ema():
    net = train.Net.create(TinyMLP(nnx.Rngs(0)), optax.sgd(0.1), ema_decay=0.9)
    grads = jax.tree.map(jnp.ones_like, net.params)
    for fn in (lambda n, g: n.apply_gradients(g), jax.jit(lambda n, g: n.apply_gradients(g))):
        new = fn(net, grads)
        for p0, p1, e1 in zip(
            jax.tree.leaves(net.params),
            jax.tree.leaves(new.params),
            jax.tree.leaves(new.ema_params),
        ):
            np.testing.assert_allclose(p1, p0 - 0.1, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(e1, 0.9 * p0 + 0.1 * p1, rtol=1e-6, atol=1e-7)
    assert net.num_params() == 4 * 8 + 8 + 8 + 1


def test_frozen_net_and_bad_arguments_raise():
    frozen = train.Net.create(TinyMLP(nnx.Rngs(0)))
    assert not frozen.trainable
    with pytest.raises(ValueError, match="frozen"):
        frozen.apply_gradients(frozen.params)
    with pytest.raises(ValueError, match="ema_decay"):
        train.Net.create(TinyMLP(nnx.Rngs(0)), TX, ema_decay=1.5)
    with pytest.raises(ValueError, match="no average"):
        frozen.merge(ema=True)
    with pytest.raises(ValueError, match="at least one network"):
        train.TrainState.create(0)
    state = train.TrainState.create(0, model=frozen)
    with pytest.raises(KeyError, match="networks: \\['model'\\]"):
        state["generator"]


def test_step_key_is_pure_in_seed_step_and_tag():
    s = train.TrainState.create(3, model=train.Net.create(TinyMLP(nnx.Rngs(0))))
    k = lambda st, *t: np.asarray(jax.random.key_data(st.step_key(*t)))
    np.testing.assert_array_equal(k(s, "a"), k(train.TrainState.create(3, model=s["model"]), "a"))
    np.testing.assert_array_equal(
        k(s, "a"), np.asarray(jax.random.key_data(jax.jit(lambda st: st.step_key("a"))(s)))
    )
    assert not np.array_equal(k(s, "a"), k(s, "b"))
    assert not np.array_equal(k(s), k(s.replace(step=jnp.int32(1))))
    assert not np.array_equal(k(s), k(train.TrainState.create(4, model=s["model"])))


def test_multi_network_update_at_different_rates(tmp_path):
    """Two trainable networks and a frozen one; the second is updated every 3rd step only."""
    tx_a, tx_b = optax.sgd(0.1), optax.sgd(0.1)
    state = train.TrainState.create(
        0,
        a=train.Net.create(nnx.Linear(2, 1, rngs=nnx.Rngs(0)), tx_a),
        b=train.Net.create(nnx.Linear(2, 1, rngs=nnx.Rngs(1)), tx_b),
        teacher=train.Net.create(nnx.Linear(2, 1, rngs=nnx.Rngs(2))),
    )
    x = jnp.ones((4, 2))

    def grads_of(name):
        @jax.jit
        def step(state):
            target = state["teacher"].merge()(x)

            def loss(p):
                return jnp.mean((state[name].merge(p)(x) - target) ** 2)

            l, g = jax.value_and_grad(loss)(state[name].params)
            return state.apply_gradients(**{name: g}), {f"loss_{name}": l}

        return step

    step_a, step_b = grads_of("a"), grads_of("b")

    def step_fn(state, step):
        state, m = step_a(state)
        if step % 3 == 0:
            state, mb = step_b(state)
            m = {**m, **mb}
        return state, m

    final, summary = train.fit(
        state,
        step_fn,
        workdir=str(tmp_path),
        print_fn=lambda s: None,
        plot=False,
        options=train.LoopOptions(
            num_steps=7, log_every=7, checkpoint_every_steps=0, checkpoint_every_secs=0
        ),
    )
    a = state
    for step in range(7):
        a, _ = step_a(a)
        if step % 3 == 0:
            a, _ = step_b(a)
    for n in ("a", "b", "teacher"):
        for u, v in zip(jax.tree.leaves(final[n].params), jax.tree.leaves(a[n].params)):
            np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    assert int(final.step) == 7
    assert set(summary["train"]) == {"loss_a", "loss_b"}
    assert not all(
        np.array_equal(u, v)
        for u, v in zip(jax.tree.leaves(final["a"].params), jax.tree.leaves(state["a"].params))
    )
    for u, v in zip(
        jax.tree.leaves(final["teacher"].params), jax.tree.leaves(state["teacher"].params)
    ):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


# ------------------------------------------------------------------------- checkpoints / resume


def test_resume_gives_identical_parameters_and_clean_metrics(straight, tmp_path):
    s_straight, summary, wd_straight = straight
    wd = str(tmp_path)
    # First half; then a run to 6 that "dies" after logging step 6 but before its checkpoint
    # survives (we delete it), so metrics.jsonl holds records past the last checkpoint.
    run(wd, 4)
    run(wd, 6)
    shutil.rmtree(os.path.join(wd, "checkpoints", "6"))
    lines = []
    s_resumed, summary_r = run(
        wd, 8, lines=lines
    )  # fresh objects: new state, checkpointer, batcher
    assert summary_r["resumed_from"] == 4
    assert any("resumed from checkpoint at step 4" in line for line in lines)
    assert_identical(s_straight, s_resumed)
    recs = metrics_lib.strip_timing(metrics_lib.read_metrics(wd))
    ref = metrics_lib.strip_timing(metrics_lib.read_metrics(wd_straight))
    assert [r["step"] for r in recs] == [r["step"] for r in ref]  # no duplicated steps
    assert recs == ref


def test_corrupt_latest_checkpoint_falls_back_and_keeps_files(straight, tmp_path, caplog):
    s_straight, _, _ = straight
    wd = str(tmp_path)
    run(wd, 8)  # checkpoints 4 and 8
    step_dir = os.path.join(wd, "checkpoints", "8")
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4", "8"]
    # Damage: truncate every data file of the latest state item.
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(0)
    with caplog.at_level(logging.WARNING, logger="fdiv.train.checkpoint"):
        s_resumed, summary = run(wd, 8)
    assert summary["resumed_from"] == 4
    assert any("damaged" in r.getMessage() and "step 8" in r.getMessage() for r in caplog.records)
    assert_identical(s_straight, s_resumed)
    # The damaged step was moved aside, not deleted; checkpoint 4 is still there; 8 was re-saved.
    moved = os.listdir(os.path.join(wd, "checkpoints_corrupt"))
    assert len(moved) == 1 and moved[0].startswith("8-")
    assert os.path.isdir(os.path.join(wd, "checkpoints_corrupt", moved[0], "state"))
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4", "8"]


def test_checkpointer_keep_last_k_and_time_policy(tmp_path):
    ck = train.Checkpointer(str(tmp_path), every_steps=2, every_secs=None, keep=2)
    state = make_state()
    for step in range(1, 7):
        if ck.should_save(step):
            ck.save(step, state.replace(step=np.int32(step)), meta={"note": "x"})
    ck.wait()
    assert ck.all_steps() == [4, 6]
    restored, meta = ck.restore_latest(make_state(seed=1))
    assert int(restored.step) == 6 and meta["note"] == "x" and meta["data_position"] == {"step": 6}
    assert_identical(restored.replace(step=np.int32(0)), state.replace(step=np.int32(0)))
    ck.close()
    timed = train.Checkpointer(str(tmp_path / "t"), every_steps=0, every_secs=1e-9, keep=1)
    assert timed.should_save(3)
    timed.close()
    never = train.Checkpointer(str(tmp_path / "n"), every_steps=0, every_secs=None, keep=1)
    assert not never.should_save(10)
    never.close()


def test_restore_with_changed_model_is_a_clear_error(tmp_path):
    ck = train.Checkpointer(str(tmp_path), every_steps=1, keep=1)
    ck.save(1, make_state())
    ck.wait()
    other = train.TrainState.create(
        0, model=train.Net.create(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), TX)
    )
    with pytest.raises(Exception):
        ck.restore(1, other)
    ck.close()


# ------------------------------------------------------------------------------ reproducibility


def test_same_seed_same_metrics_different_seed_different(straight, tmp_path):
    _, _, wd_a = straight
    run(str(tmp_path / "b"), 8)
    run(str(tmp_path / "c"), 8, seed=1)
    a = metrics_lib.strip_timing(metrics_lib.read_metrics(wd_a))
    b = metrics_lib.strip_timing(metrics_lib.read_metrics(str(tmp_path / "b")))
    c = metrics_lib.strip_timing(metrics_lib.read_metrics(str(tmp_path / "c")))
    assert a == b
    assert a != c


# ------------------------------------------------------------------------------------- sharding

SHARDED_SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    import test_train as t
    from fdiv.train import sharding
    mesh = sharding.make_mesh()
    batcher = t.make_batcher(mesh=mesh)
    b = batcher(0)
    info = {{"devices": len(jax.devices()), "batch_devices": len(b["x"].sharding.device_set),
            "batch_shard_rows": b["x"].addressable_shards[0].data.shape[0]}}
    state = t.make_state(mesh=mesh)
    losses = []
    def step_fn(s, step):
        s, m = t.update(s, batcher(step))
        losses.append(float(m["loss"]))
        return s, m
    with tempfile.TemporaryDirectory() as wd:
        state, _ = t.train.fit(state, step_fn, workdir=wd, print_fn=lambda s: None, plot=False,
                               options=t.train.LoopOptions(num_steps=6, log_every=3,
                               checkpoint_every_steps=0, checkpoint_every_secs=0))
    info["param_devices"] = len(jax.tree.leaves(state["model"].params)[0].sharding.device_set)
    info["losses"] = losses
    info["params"] = [np.asarray(x).tolist() for x in jax.tree.leaves(state["model"].params)]
    if {resume_dir!r}:
        # Resume, in this new process, a run the parent process checkpointed at step 4.
        resumed, _ = t.run({resume_dir!r}, 8)
        np.savez({resume_dir!r} + "/final.npz", *t.leaves(resumed))
    print("RESULT" + json.dumps(info))
""")


def _start_with_devices(n, resume_dir=""):
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}",
        "JAX_PLATFORMS": "cpu",
    }
    script = SHARDED_SCRIPT.format(
        tests=os.path.dirname(os.path.abspath(__file__)), resume_dir=resume_dir
    )
    return subprocess.Popen(
        [sys.executable, "-c", script],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc):
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    line = [l for l in stdout.splitlines() if l.startswith("RESULT")][-1]
    return json.loads(line[len("RESULT") :])


def test_eight_devices_match_one_device_and_resume_in_new_process(straight, tmp_path):
    """8 simulated CPU devices give the 1-device losses; the 1-device subprocess also resumes a
    run checkpointed by this process (a new process, nothing shared but the workdir)."""
    wd = str(tmp_path)
    run(wd, 4)
    procs = _start_with_devices(1, resume_dir=wd), _start_with_devices(8)  # concurrently
    one, eight = _result(procs[0]), _result(procs[1])
    assert one["devices"] == 1 and eight["devices"] == 8
    assert eight["batch_devices"] == 8 and eight["batch_shard_rows"] == 16 // 8
    assert eight["param_devices"] == 8  # replicated
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5, atol=1e-6)
    for a, b in zip(eight["params"], one["params"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    got = np.load(os.path.join(wd, "final.npz"))
    ref = leaves(straight[0])
    assert len(got.files) == len(ref)
    for i, a in enumerate(ref):
        np.testing.assert_array_equal(got[f"arr_{i}"], a)


def test_multi_process_env_detection():
    assert not sharding.is_multi_process_env({})
    assert not sharding.is_multi_process_env({"SLURM_NTASKS": "1", "OMPI_COMM_WORLD_SIZE": "1"})
    assert not sharding.is_multi_process_env({"TPU_WORKER_HOSTNAMES": "localhost"})
    assert sharding.is_multi_process_env({"SLURM_NTASKS": "4"})
    assert sharding.is_multi_process_env({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"})
    assert sharding.is_multi_process_env({"TPU_WORKER_HOSTNAMES": "h0,h1"})
    assert sharding.maybe_initialize_distributed({}) is False


def test_distributed_arguments_from_environment(monkeypatch):
    env = {
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:8476",
        "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "2",
    }
    assert sharding.distributed_arguments(env) == {
        "coordinator_address": "10.0.0.1:8476",
        "num_processes": 4,
        "process_id": 2,
    }
    assert sharding.distributed_arguments({"SLURM_NTASKS": "2"}) == {}
    with pytest.raises(ValueError, match="JAX_PROCESS_ID='one' must be a non-negative integer"):
        sharding.distributed_arguments({**env, "JAX_PROCESS_ID": "one"})
    calls = []
    monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    assert sharding.maybe_initialize_distributed(env) is True
    assert sharding.maybe_initialize_distributed({"JAX_NUM_PROCESSES": "1"}) is False
    assert calls == [sharding.distributed_arguments(env)]
    # An experiment started on every host builds its mesh with make_mesh(): that joins the job.
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    mesh = sharding.make_mesh()
    assert len(calls) == 2 and calls[1] == calls[0] and mesh.devices.size == len(jax.devices())


def test_make_mesh_uses_all_devices_on_one_data_axis():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == ("data",) and mesh.devices.size == len(jax.devices())
    assert sharding.make_mesh(jax.devices()[:1]).devices.size == 1


def test_shard_batch_rejects_scalars():
    with pytest.raises(ValueError, match="scalar"):
        sharding.shard_batch({"x": np.float32(1.0)}, sharding.make_mesh())


# ------------------------------------------------------------------------------ writers / plots


def test_metric_writer_line_jsonl_and_tensorboard_path(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:
        def __init__(self, logdir):
            calls.append(("init", logdir))

        def add_scalar(self, tag, value, global_step):
            calls.append((tag, value, global_step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(
        sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=FakeWriter)
    )
    monkeypatch.setitem(sys.modules, "torch", None)  # force the tensorboardX path
    lines = []
    w = metrics_lib.MetricWriter(str(tmp_path), 100, print_fn=lines.append)
    w.write(
        50, {"loss": jnp.float32(0.25), "acc": np.float64(0.5)}, steps_per_sec=10.0, wall_time=5.0
    )
    w.write(50, {"accuracy": 0.75}, prefix="eval/")
    w.close()
    assert lines[0].startswith("step  50/100  50% | ")
    assert lines[1].startswith("eval step  50/100 | accuracy 0.75")
    assert (
        "loss 0.25" in lines[0]
        and "acc 0.5" in lines[0]
        and "10.0 steps/s" in lines[0]
        and "ETA 0:00:05" in lines[0]
    )
    recs = metrics_lib.read_metrics(str(tmp_path))
    assert recs[0] == {
        "step": 50,
        "loss": 0.25,
        "acc": 0.5,
        "steps_per_sec": 10.0,
        "eta_sec": 5.0,
        "wall_time": 5.0,
    }
    assert recs[1] == {"step": 50, "eval/accuracy": 0.75}
    assert ("init", os.path.join(str(tmp_path), "tensorboard")) in calls
    assert (
        ("loss", 0.25, 50) in calls and ("eval/accuracy", 0.75, 50) in calls and ("close",) in calls
    )


def test_tensorboard_never_goes_through_torch(tmp_path, monkeypatch):
    """TensorBoard comes from tensorboardX alone, even where torch is importable."""
    made = []

    class Writer:
        def __init__(self, logdir):
            made.append(type(self).__qualname__)

        def add_scalar(self, *a):
            pass

        def flush(self):
            pass

        def close(self):
            pass

    class TorchWriter(Writer):
        pass

    torch_tb = types.SimpleNamespace(SummaryWriter=TorchWriter)
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(utils=None))
    monkeypatch.setitem(sys.modules, "torch.utils", types.SimpleNamespace(tensorboard=torch_tb))
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", torch_tb)
    monkeypatch.setitem(sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=Writer))
    w = metrics_lib.MetricWriter(str(tmp_path), 10, print_fn=lambda s: None)
    w.close()
    assert made == [Writer.__qualname__]


def test_metric_writer_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    w = metrics_lib.MetricWriter(str(tmp_path), 10, print_fn=lambda s: None)
    assert w._tb is None
    w.write(1, {"loss": 1.0})
    assert not os.path.exists(os.path.join(str(tmp_path), "tensorboard"))


def test_mean_accumulator_and_eta():
    acc = metrics_lib.MeanAccumulator()
    acc.add({"a": jnp.float32(1.0), "b": 2.0})
    acc.add({"a": jnp.float32(3.0)})
    assert acc.result() == {"a": 2.0, "b": 2.0}
    assert len(acc) == 0
    assert metrics_lib.format_eta(3725) == "1:02:05" and metrics_lib.format_eta(float("inf")) == "?"


def test_fit_writes_summary_and_curves(tmp_path):
    batcher = make_batcher()
    opts = train.LoopOptions(
        num_steps=4, log_every=2, checkpoint_every_steps=0, checkpoint_every_secs=0
    )
    _, summary = train.fit(
        make_state(),
        lambda s, step: update(s, batcher(step)),
        workdir=str(tmp_path),
        options=opts,
        eval_fn=lambda s: {"loss": 1.0},
        meta={"config": {"a": 1}},
        print_fn=lambda s: None,
    )
    with open(tmp_path / "summary.json") as f:
        on_disk = json.load(f)
    assert (
        on_disk["config"] == {"a": 1}
        and on_disk["num_steps"] == 4
        and on_disk["eval"] == {"eval/loss": 1.0}
    )
    assert np.isfinite(on_disk["train"]["loss"]) and on_disk["first_step_sec"] > 0
    assert summary["num_steps"] == 4
    with open(tmp_path / "curves.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path / "checkpoints") == ["4"]  # final checkpoint always written


def test_plots_and_image_grid(tmp_path):
    imgs = np.stack([np.full((2, 3, 1), v) for v in (-1.0, 0.0, 1.0)]).astype(np.float32)
    grid = train.plotting.image_grid(imgs, ncols=2, pad=1)
    assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1)
    np.testing.assert_allclose(grid[1:3, 1:4, 0], 0.0)
    np.testing.assert_allclose(grid[1:3, 5:8, 0], 0.5)
    np.testing.assert_allclose(grid[4:6, 1:4, 0], 1.0)
    assert grid[0, 0, 0] == 1.0  # padding
    p1 = train.save_image_grid(imgs, str(tmp_path / "g.png"), title="t")
    pts = np.random.default_rng(0).normal(size=(50, 2))
    p2 = train.save_scatter(
        pts, str(tmp_path / "s.png"), reference=pts + 1, centres=np.zeros((1, 2)), title="s"
    )
    for p in (p1, p2):
        with open(p, "rb") as f:
            assert f.read(4) == b"\x89PNG"
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        train.save_scatter(np.zeros((3, 3)), str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        train.save_image_grid(np.zeros((3, 4, 4)), str(tmp_path / "x.png"))
    assert train.plot_curves(str(tmp_path / "empty")) is None


# --------------------------------------------------------------------------------------- config


def test_check_config_and_to_dataclass():
    import dataclasses

    import ml_collections

    cfg = ml_collections.ConfigDict(
        {"a": 1.0, "sub": {"b": float("nan"), "c": [1.0, float("nan")]}}
    )
    with pytest.raises(ValueError, match=r"config\.sub\.b.*config\.sub\.c\[1\]"):
        train.check_config(cfg)
    train.check_config(ml_collections.ConfigDict({"a": 1.0, "b": float("inf")}))

    @dataclasses.dataclass(frozen=True)
    class Inner:
        width: int = 3
        sizes: tuple[int, ...] = (1,)

    @dataclasses.dataclass(frozen=True)
    class Outer:
        lr: float
        inner: Inner = Inner()

    got = train.to_dataclass(
        Outer, ml_collections.ConfigDict({"lr": 0.1, "inner": {"width": 5, "sizes": [2, 3]}})
    )
    assert got == Outer(0.1, Inner(5, (2, 3)))
    with pytest.raises(
        ValueError, match=r"unknown field\(s\) \['wdith'\].*valid fields: \['sizes', 'width'\]"
    ):
        train.to_dataclass(Outer, {"lr": 0.1, "inner": {"wdith": 5}})
    with pytest.raises(ValueError, match="missing required"):
        train.to_dataclass(Outer, {})


def test_loop_options_validation():
    assert train.LoopOptions.from_config(
        {"num_steps": 5, "log_every": 1, "other": 3}
    ) == train.LoopOptions(5, 1)
    for bad in (
        {"num_steps": -1},
        {"num_steps": 3, "log_every": 0},
        {"num_steps": 2.5},
        {"num_steps": 3, "keep_checkpoints": 0},
        {"num_steps": 3, "checkpoint_every_secs": -1.0},
    ):
        with pytest.raises(ValueError, match="LoopOptions"):
            train.LoopOptions(**bad)


# ------------------------------------------------------ integrity, config changes, rerun, Ctrl-C


def _tree_bytes(directory):
    out = {}
    for root, _, files in os.walk(directory):
        for f in files:
            with open(os.path.join(root, f), "rb") as fh:
                out[os.path.relpath(os.path.join(root, f), directory)] = fh.read()
    return out


class WideMLP(nnx.Module):
    """Large enough that the middle of a data file is array bytes, not file structure."""

    def __init__(self, rngs):
        self.l1 = nnx.Linear(64, 256, rngs=rngs)
        self.l2 = nnx.Linear(256, 1, rngs=rngs)


def test_overwritten_bytes_are_caught_by_checksums(tmp_path, caplog):
    """64 bytes overwritten in the middle of the largest data file of the newest step: the
    step's CRC-32 check fails, one warning line says so, and the previous step is used."""
    wd = str(tmp_path)
    state = train.TrainState.create(0, model=train.Net.create(WideMLP(nnx.Rngs(0)), TX))
    ck = train.Checkpointer(wd, every_steps=1, keep=3, async_save=False)
    for step in (1, 2):
        ck.save(step, state.replace(step=np.int32(step)))
    ck.close()
    state_dir = os.path.join(wd, "checkpoints", "2", "state")
    files = [os.path.join(r, f) for r, _, fs in os.walk(state_dir) for f in fs]
    target = max(files, key=os.path.getsize)
    size = os.path.getsize(target)
    assert size > 50_000
    with open(target, "r+b") as fh:
        fh.seek(size // 2 - 32)
        chunk = fh.read(64)
        fh.seek(size // 2 - 32)
        fh.write(bytes(b ^ 0xFF for b in chunk))
    ck = train.Checkpointer(wd, every_steps=1, keep=3)
    with caplog.at_level(logging.WARNING, logger="fdiv.train.checkpoint"):
        restored, meta = ck.restore_latest(state)
    ck.close()
    assert int(restored.step) == 1 and meta["step"] == 1
    assert_identical(restored, state.replace(step=np.int32(1)))
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name == "fdiv.train.checkpoint"
    ]
    assert len(warnings) == 1, warnings
    assert re.fullmatch(
        r"checkpoint step 2 in \S+ is damaged \(checksum mismatch in leaf "
        r"nets/model/\S+\); moved it to \S+/checkpoints_corrupt/2-\d+ and "
        r"trying the previous step\.",
        warnings[0],
    ), warnings[0]
    moved = os.listdir(os.path.join(wd, "checkpoints_corrupt"))
    assert len(moved) == 1 and moved[0].startswith("2-")
    assert os.listdir(os.path.join(wd, "checkpoints")) == ["1"]


def test_checksums_are_the_crc32_of_each_leaf(tmp_path):
    import zlib

    ck = train.Checkpointer(str(tmp_path), every_steps=1, keep=1, async_save=False)
    state = make_state()
    ck.save(1, state)
    meta = ck.read_meta(1)
    ck.close()
    paths, values, _ = ckpt_lib._leaf_paths(state)
    assert set(meta["state_crc32"]) == {"/".join(p) for p in paths}
    for path, v in zip(paths, values):
        raw = np.asarray(jax.random.key_data(v) if ckpt_lib._is_key(v) else v)
        want = f"{zlib.crc32(np.ascontiguousarray(raw).tobytes()) & 0xFFFFFFFF:08x}"
        assert meta["state_crc32"]["/".join(path)] == want
        assert meta["state_structure"]["/".join(path)] == [list(raw.shape), raw.dtype.name]


def test_changed_config_is_not_corrupt_restore_latest_raises_before_touching(tmp_path):
    wd = str(tmp_path)
    config = {"lr": 0.1, "model": {"width": 8}, "log_every": 2, "seed": 0}
    ck = train.Checkpointer(wd, every_steps=1, keep=3, async_save=False)
    for step in (1, 2):
        ck.save(step, make_state().replace(step=np.int32(step)), meta={"config": config})
    ck.close()
    before = _tree_bytes(wd)
    changed = {**config, "lr": 0.2, "model": {"width": 8, "depth": 2}, "log_every": 5}
    ck = train.Checkpointer(wd, every_steps=1, keep=3)
    with pytest.raises(
        train.ConfigMismatchError,
        match=r"different run.*differ: lr 0\.1 -> 0\.2, model\.depth <absent> -> 2\)"
        r".*new --workdir.*--config\.resume=restart",
    ) as info:
        ck.restore_latest(make_state(), config=changed)
    assert isinstance(info.value, ValueError)
    assert info.value.differences == [("lr", 0.1, 0.2), ("model.depth", "<absent>", 2)]
    assert "\n" not in str(info.value) and "log_every" not in str(info.value)
    # A different state structure under the same config is a different run too.
    other = train.TrainState.create(
        0, model=train.Net.create(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), TX)
    )
    with pytest.raises(
        train.ConfigMismatchError,
        match=r"state structure differs: model/ema_params/l1/bias \[8\] float32 -> <absent>, "
        r"model/ema_params/l1/kernel \[4, 8\] float32 -> <absent> and \d+ more\)",
    ):
        ck.restore_latest(other, config=config)
    assert _tree_bytes(wd) == before  # nothing moved, deleted or rewritten
    # Only bookkeeping fields changed: an ordinary resume of the newest step.
    restored, meta = ck.restore_latest(make_state(seed=1), config={**config, "log_every": 5})
    assert int(restored.step) == 2 and meta["config"] == config
    ck.close()


def test_damaged_steps_still_fall_back_through_restore_latest(tmp_path):
    wd = str(tmp_path)
    ck = train.Checkpointer(wd, every_steps=1, keep=3, async_save=False)
    for step in (1, 2, 3):
        ck.save(step, make_state().replace(step=np.int32(step)), meta={"config": {"lr": 0.1}})
    ck.close()
    with open(os.path.join(wd, "checkpoints", "3", "meta", "metadata"), "w") as f:
        f.write("{not json")  # unreadable metadata
    shutil.rmtree(os.path.join(wd, "checkpoints", "2", "state"))  # missing files
    ck = train.Checkpointer(wd, every_steps=1, keep=3)
    restored, meta = ck.restore_latest(make_state(), config={"lr": 0.1})
    assert int(restored.step) == 1 and meta["step"] == 1
    assert sorted(n.split("-")[0] for n in os.listdir(os.path.join(wd, "checkpoints_corrupt"))) == [
        "2",
        "3",
    ]
    ck.close()


def test_fit_stops_on_changed_config_and_restart_archives_the_old_run(straight, tmp_path):
    s_straight, _, wd_straight = straight
    wd = str(tmp_path)
    run(wd, 4, meta={"config": {"lr": 0.1}}, plot=True)
    before = _tree_bytes(wd)
    with pytest.raises(train.ConfigMismatchError, match=r"lr 0\.1 -> 0\.2"):
        run(wd, 8, meta={"config": {"lr": 0.2}})
    assert _tree_bytes(wd) == before
    with pytest.raises(
        ValueError, match=r"LoopOptions.resume='fresh' must be one of \('auto', 'restart'\)"
    ):
        run(wd, 8, meta={"config": {"lr": 0.2}}, resume="fresh")
    assert _tree_bytes(wd) == before
    lines = []
    state, summary = run(wd, 8, meta={"config": {"lr": 0.2}}, resume="restart", lines=lines)
    assert summary["resumed_from"] is None
    assert_identical(s_straight, state)
    (stamp,) = os.listdir(os.path.join(wd, "archive"))
    archived = os.path.join(wd, "archive", stamp)
    assert {"checkpoints", "curves.png", "metrics.jsonl", "summary.json"} <= set(
        os.listdir(archived)
    )
    assert _tree_bytes(archived) == before
    assert any(f"moved the previous run to {archived}" in line for line in lines)
    assert [r["step"] for r in metrics_lib.read_metrics(wd)] == [
        r["step"] for r in metrics_lib.read_metrics(wd_straight)
    ]
    # The new run resumes normally with its own config.
    _, again = run(wd, 8, meta={"config": {"lr": 0.2}})
    assert again["reevaluation"]["resumed_from"] == 8


def test_records_say_how_many_steps_they_average(tmp_path):
    wd = str(tmp_path)
    run(wd, 3, ckpt_every=3)  # checkpoint at 3, not a logging step (log_every=2)
    _, summary = run(wd, 8, ckpt_every=3)
    assert summary["resumed_from"] == 3
    recs = metrics_lib.read_metrics(wd)
    assert [(r["step"], r["num_steps_averaged"]) for r in recs] == [
        (2, 2),
        (3, 1),
        (4, 1),
        (6, 2),
        (8, 2),
    ]


def test_rerun_of_a_finished_run_keeps_the_training_record(tmp_path):
    wd = str(tmp_path)
    eval_fn = lambda s: {"loss": jnp.mean(jax.tree.leaves(s["model"].params)[0])}
    _, first = run(wd, 8, eval_fn=eval_fn)
    with open(os.path.join(wd, "summary.json"), "rb") as f:
        record = f.read()
    metrics_before = _tree_bytes(wd)["metrics.jsonl"]
    assert first["steps_per_sec"] is not None and "reevaluation" not in first
    _, again = run(wd, 8, eval_fn=eval_fn)
    # An experiment adds its own fields and writes the summary again: still beside the record.
    train.write_summary(wd, {**again, "student": again["eval"]})
    with open(os.path.join(wd, "summary.json"), "rb") as f:
        assert f.read() == record
    assert _tree_bytes(wd)["metrics.jsonl"] == metrics_before
    reeval = train.read_summary(wd, "summary_reeval.json")
    assert reeval["reevaluation"]["resumed_from"] == 8 and reeval["student"] == first["eval"]
    for key in ("first_step_sec", "steps_per_sec", "wall_time_sec", "train"):
        assert reeval[key] == json.loads(record)[key]
    assert again["eval"] == first["eval"]


def test_ctrl_c_saves_and_raises_training_interrupted(straight, tmp_path):
    s_straight, _, _ = straight
    wd = str(tmp_path)
    batcher = make_batcher()

    def step_fn(state, step):
        if step == 5:
            raise KeyboardInterrupt
        return update(state, batcher(step))

    lines = []
    with pytest.raises(train.TrainingInterrupted) as info:
        run(wd, 8, step_fn=step_fn, lines=lines)
    assert isinstance(info.value, KeyboardInterrupt)
    assert info.value.step == 5 and info.value.workdir == wd
    assert str(info.value) == (
        f"interrupted at step 5; checkpoint saved in {wd}/checkpoints; "
        "run the same command again to resume."
    )
    assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["4", "5"]
    s_resumed, summary = run(wd, 8)
    assert summary["resumed_from"] == 5
    assert_identical(s_straight, s_resumed)


def test_progress_lines_fit_80_columns_and_banner_prints_once(tmp_path):
    line = metrics_lib.progress_line(
        123456,
        1000000,
        {
            "critic/fake_dsm_loss": 0.123456,
            "generator_surrogate_loss": 1.5e-7,
            "discriminator_accuracy": 0.5,
            "weight_cv": 12.0,
        },
        steps_per_sec=1234.5,
        eta=86400 * 3 + 5,
        phase="distill",
    )
    assert len(line) <= 80, line
    assert line.startswith("[distill] step  123456/1000000  12% | crit") and "~ 0.1235 | " in line
    assert line.endswith(" | 1234 steps/s | ETA 72:00:05")
    long_name = metrics_lib.progress_line(
        5, 10, {"a" * 120: 1.0, "b_loss": 2.0}, steps_per_sec=2.0, eta=2.5
    )
    assert long_name.startswith("step  5/10  50% | b_loss 2 | 2.0 steps/s | ETA 0:00:02")
    assert len(metrics_lib.progress_line(5, 10, {"a" * 120: 1.0})) <= 80
    lines = []
    banner = "f-distill | js on ring8 | 8 cpu devices | workdir " + str(tmp_path)
    many = {f"metric_number_{i}": jnp.float32(i) for i in range(12)}
    batcher = make_batcher()

    def step_fn(state, step):
        state, m = update(state, batcher(step))
        return state, {**many, **m}

    run(
        str(tmp_path),
        4,
        step_fn=step_fn,
        lines=lines,
        banner=banner,
        eval_fn=lambda s: {f"eval_metric_{i}": float(i) for i in range(15)},
    )
    assert lines[0] == banner and lines.count(banner) == 1
    assert all(len(l) <= 80 for l in lines[1:]), [l for l in lines if len(l) > 80]
    train_lines = [l for l in lines if l.startswith("step ")]
    assert [l.split(" | ")[0] for l in train_lines] == ["step 2/4  50%", "step 4/4 100%"]
    assert all(" loss " in l and "steps/s" in l and "ETA" in l for l in train_lines[1:])
    shown = " ".join(l for l in lines if not l.startswith("step "))
    assert all(f"eval_metric_{i} {i}" in shown for i in range(15))
