"""The stage cache (`experiments.cache.cached_run`) in a two-process JAX job on localhost.

Two processes (one CPU device each, gloo collectives) share a cache directory. A stage's
training needs both processes (here a barrier stands for its collectives and Orbax's
cooperative save, and each process writes its own part of the run), so both must train into
the same directory and the entry must hold both parts. With a cache directory the processes do
not share, every process raises `CacheNotSharedError` instead of waiting forever.
"""

import os
import sys
import textwrap

from test_multihost import free_port, run_children

CHILD = textwrap.dedent("""
    import os, sys
    process_id, port, shared, private = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=process_id)
    from jax.experimental import multihost_utils
    from experiments import cache

    calls = []

    def train(directory):
        calls.append(directory)
        with open(os.path.join(directory, f"part{jax.process_index()}"), "w") as f:
            f.write(directory)
        multihost_utils.sync_global_devices("parts written")

    def run(root, key):
        return cache.cached_run("stage", key, train, cache_dir=root, code="v1",
                                print_fn=lambda s: None)

    entry = run(shared, {"a": 1})
    assert sorted(os.listdir(entry)) == ["cache_key.json", "part0", "part1"], os.listdir(entry)
    parts = {open(os.path.join(entry, f"part{i}")).read() for i in (0, 1)}
    assert len(parts) == 1, f"the processes trained into different directories: {parts}"
    assert run(shared, {"a": 1}) == entry and len(calls) == 1, calls
    assert os.listdir(shared) == [os.path.basename(entry)], os.listdir(shared)

    mine = os.path.join(private, str(process_id))
    for root, key, what in ((shared if process_id == 0 else mine, {"a": 1}, "hit"),
                            (mine, {"a": 2}, "miss")):
        try:
            run(root, key)
        except cache.CacheNotSharedError as e:
            assert "shared" in str(e), e
            print("NOT-SHARED", what, process_id, flush=True)
        else:
            raise AssertionError(f"{what}: a cache the processes do not share was accepted")
    if process_id == 0:  # process 0 made the temporary directory, and removed it before raising
        assert os.listdir(mine) == [], f"a temporary directory was left: {os.listdir(mine)}"
    print("CHILD-DONE", process_id, flush=True)
""")


def test_two_processes_train_one_entry_together_and_refuse_an_unshared_cache(tmp_path):
    port = str(free_port())
    shared, private = str(tmp_path / "shared"), str(tmp_path / "private")
    codes, outs = run_children(
        [[sys.executable, "-c", CHILD, str(i), port, shared, private] for i in range(2)],
        {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""},
        timeout=120,  # the old code failed in seconds; a hang must not last
    )
    for i, (code, out) in enumerate(zip(codes, outs)):
        assert code == 0 and f"CHILD-DONE {i}" in out, f"process {i}:\n{out[-3000:]}"
        assert f"NOT-SHARED hit {i}" in out and f"NOT-SHARED miss {i}" in out, out[-3000:]
