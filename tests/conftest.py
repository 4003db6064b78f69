"""Test-session setup: one XLA compilation cache for the session and its subprocesses.

Many tests build the same jitted steps again (each experiment run traces fresh closures, and the
command-line and multi-process tests start new interpreters); a persistent compilation cache in
a temporary directory lets every repeat load the compiled executable instead of compiling it.
A cache directory the user set is kept as it is.
"""

import os
import shutil
import tempfile

_OWNED_CACHE = None


def pytest_configure(config):
    global _OWNED_CACHE
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    _OWNED_CACHE = tempfile.mkdtemp(prefix="fdiv-tests-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWNED_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def pytest_unconfigure(config):
    if _OWNED_CACHE is not None:
        os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)
        shutil.rmtree(_OWNED_CACHE, ignore_errors=True)
