"""Multi-process training on localhost: two JAX processes (4 CPU devices each, gloo
collectives) against one process with 8 devices, on the f-distill quick config.

Each child process is configured the way a multi-host job is (`jax.distributed.initialize`
with a coordinator address, its own process id, its own devices); nothing of this leaks into
the test process. Checks: same losses and parameters as one 8-device process, each
checkpoint written once and resumable by either layout, ``metrics.jsonl`` written by process 0
only.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np

from fdiv import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs one or more experiments in this process (of `num_processes`); argv: process id,
# number of processes, coordinator port, then workdirs. The stage cache is $FDIV_CACHE (not
# a config field, so that runs resumed with another cache have the same config).
CHILD = textwrap.dedent("""
    import sys
    process_id, num_processes = int(sys.argv[1]), int(sys.argv[2])
    port, workdirs = sys.argv[3], sys.argv[4:]
    import jax
    if num_processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=num_processes, process_id=process_id)
    import experiments
    for workdir in workdirs:
        config = experiments.load_config("fdistill_toy2d", "quick")
        summary = experiments.run(config, workdir)  # the one line to adapt if the API changes
        assert summary["num_devices"] == 8, summary["num_devices"]
    print("CHILD-DONE", jax.process_index(), jax.process_count(), len(jax.local_devices()))
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_children(
    commands: list[list[str]], env: dict[str, str], timeout: float
) -> tuple[list[int], list[str]]:
    """Runs the processes of one job at once from the repository root; (exit codes, outputs).

    Output goes to files, not pipes: a pipe that is not read while the test waits for another
    process fills up and blocks its writer, and the other process then waits for it at the
    distributed runtime's shutdown barrier. Processes still running at `timeout` are killed.
    """
    logs = [tempfile.TemporaryFile("w+") for _ in commands]
    procs = [
        subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
        for cmd, log in zip(commands, logs)
    ]
    deadline = time.monotonic() + timeout
    try:
        for p in procs:
            p.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        outs = []
        for log in logs:
            log.seek(0)
            outs.append(log.read())
            log.close()
    return [p.returncode for p in procs], outs


def _launch(
    num_processes: int, cache: str, xla_cache: str, *workdirs: str, timeout: float = 900
) -> list[str]:
    """Starts `num_processes` children with 8 / num_processes host devices each, stage cache
    `cache` and compilation cache `xla_cache`; waits."""
    port = str(free_port())
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        # XLA compilation is most of the test's time (the programs are tiny; f-distill builds
        # its steps per run, so each run compiles them again): skip the backend optimisations.
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // num_processes} "
        "--xla_backend_optimization_level=0",
        "FDIV_CACHE": cache,
        # A later one-process launch reuses the earlier one's compiled programs (in a
        # multi-process job only process 0 writes this cache, so the others compile anyway).
        "JAX_COMPILATION_CACHE_DIR": xla_cache,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    codes, outs = run_children(
        [
            [sys.executable, "-c", CHILD, str(i), str(num_processes), port, *workdirs]
            for i in range(num_processes)
        ],
        env,
        timeout,
    )
    for i, (code, out) in enumerate(zip(codes, outs)):
        assert code == 0, f"process {i} of {num_processes} failed:\n{out[-4000:]}"
        assert f"CHILD-DONE {i} {num_processes} {8 // num_processes}" in out, out[-2000:]
    return outs


def _final_arrays(workdir: str, step: int) -> dict[str, np.ndarray]:
    ck = train.Checkpointer(workdir, every_steps=0, keep=3)
    try:
        return ck.read_arrays(step)
    finally:
        ck.close()


def _assert_close_runs(a: str, b: str, step: int = 6):
    ra, rb = train.read_metrics(a), train.read_metrics(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for x, y in zip(ra, rb):
        if x.get("num_steps_averaged") != y.get("num_steps_averaged"):
            continue  # the first record after a resume averages fewer steps (and says so)
        x, y = train.strip_timing([x])[0], train.strip_timing([y])[0]
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_allclose(
                x[k], y[k], rtol=2e-4, atol=1e-5, err_msg=f"step {x['step']} {k}"
            )
    _assert_same_arrays(a, b, step)


def _assert_same_arrays(a: str, b: str, step: int):
    pa, pb = _final_arrays(a, step), _final_arrays(b, step)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pa[k], pb[k], rtol=1e-4, atol=1e-5, err_msg=k)


def _truncate_to(src: str, dst: str, step: int) -> str:
    """A copy of run `src` as if it had stopped right after checkpoint `step`."""
    shutil.copytree(src, dst)
    ckpt_dir = os.path.join(dst, "checkpoints")
    for name in os.listdir(ckpt_dir):
        if name.isdigit() and int(name) > step:
            shutil.rmtree(os.path.join(ckpt_dir, name))
    for name in ("summary.json", "curves.png"):
        if os.path.exists(os.path.join(dst, name)):
            os.remove(os.path.join(dst, name))
    return dst


def test_two_processes_match_one_process_and_resume_across_layouts(tmp_path):
    xla = str(tmp_path / "xla")
    two, one = str(tmp_path / "two"), str(tmp_path / "one")
    # One process (8 devices): the reference run, its teacher trained into its own cache.
    _launch(1, str(tmp_path / "cache_one"), xla, one)
    # Two processes (4 devices each) train the teacher together into a fresh cache (the
    # stage cache's multi-process path), distil, and, in the same processes (compiled
    # programs reused), resume the one-process run's step-3 checkpoint.
    one_resumed_by_two = _truncate_to(one, str(tmp_path / "one_then_two"), 3)
    _launch(2, str(tmp_path / "cache_two"), xla, two, one_resumed_by_two)
    # One process resumes the two-process run's step-3 checkpoint.
    two_resumed_by_one = _truncate_to(two, str(tmp_path / "two_then_one"), 3)
    _launch(1, str(tmp_path / "cache_one"), xla, two_resumed_by_one)

    # The teacher trained by two processes is the one trained by one, and it was published
    # once, with no temporary directory left.
    entries = [sorted(os.listdir(tmp_path / c)) for c in ("cache_one", "cache_two")]
    assert entries[0] == entries[1] and len(entries[0]) == 1, entries
    teachers = [str(tmp_path / c / entries[0][0]) for c in ("cache_one", "cache_two")]
    last = max(int(n) for n in os.listdir(os.path.join(teachers[0], "checkpoints")) if n.isdigit())
    _assert_same_arrays(*teachers, step=last)
    _assert_close_runs(two, one)
    _assert_close_runs(two_resumed_by_one, one)
    _assert_close_runs(one_resumed_by_two, one)
    for wd in (two, one, two_resumed_by_one, one_resumed_by_two):
        records = train.read_metrics(wd)
        keys = [
            (r["step"], "eval" if any(k.startswith("eval/") for k in r) else "train")
            for r in records
        ]
        assert len(keys) == len(set(keys)), f"{wd}: records written twice: {keys}"
        # Each checkpoint once, no half-written (temporary) step directories left.
        assert sorted(os.listdir(os.path.join(wd, "checkpoints"))) == ["3", "6"], wd
    for wd in (two_resumed_by_one, one_resumed_by_two):
        with open(os.path.join(wd, "summary.json")) as f:
            assert json.load(f)["training"]["resumed_from"] == 3
