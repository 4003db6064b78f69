"""Experiment configs: one module per setting, ``get_config(arg=None)`` with variants.

Each module ``configs/NAME.py`` defines ``base()`` (a ConfigDict; an experiment's base config
is generated from its typed defaults in `experiments.settings`, other settings derive from a
base by calling it) and variants as functions ``variant_<name>(config) -> config``, found by
their prefix (never listed by hand); ``get_config(arg)`` is always
``configs.build(globals(), arg)``. Configs import each other as modules of this package, never
by file path.

    import configs
    configs.names()                             # ['classifier_digits', ..., 'fdistill_toy2d']
    configs.variants("fdistill_toy2d")          # ('grid25', 'grid25_quick', 'quick')
    config = configs.get_config("fdistill_toy2d", "quick")

The command line loads the same files: ``python -m experiments.main
--config=configs/NAME.py[:VARIANT]``.
"""

from __future__ import annotations

import difflib
import importlib
import os
import pkgutil
from typing import Any, Mapping

DIRECTORY = os.path.dirname(os.path.abspath(__file__))
VARIANT_PREFIX = "variant_"


def names() -> list[str]:
    """The config modules of this package, sorted."""
    return sorted(m.name for m in pkgutil.iter_modules([DIRECTORY]) if not m.name.startswith("_"))


def _module(name: str):
    if name not in names():
        near = difflib.get_close_matches(name, names(), n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(
            f"no config {name!r} (no file configs/{name}.py); {hint}configs: {', '.join(names())}"
        )
    return importlib.import_module(f"configs.{name}")


def variants_in(namespace: Mapping[str, Any]) -> tuple[str, ...]:
    """Variant names defined in a config module's namespace (``variant_<name>`` functions)."""
    return tuple(
        sorted(
            k[len(VARIANT_PREFIX) :]
            for k, v in namespace.items()
            if k.startswith(VARIANT_PREFIX) and callable(v)
        )
    )


def variants(name: str) -> tuple[str, ...]:
    """Variant names of config `name`."""
    return variants_in(vars(_module(name)))


def build(namespace: Mapping[str, Any], arg: str | None = None):
    """``base()`` of a config module, then its ``variant_<arg>`` when `arg` is given.

    Raises:
      ValueError: for an unknown variant (the message lists the variants).
    """
    config = namespace["base"]()
    if arg is None or arg == "":
        return config
    fn = namespace.get(VARIANT_PREFIX + str(arg))
    if not callable(fn):
        module = namespace.get("__name__", "config").rsplit(".", 1)[-1]
        have = variants_in(namespace)
        near = difflib.get_close_matches(str(arg), have, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        raise ValueError(
            f"config {module!r} has no variant {arg!r}; {hint}variants: "
            f"{', '.join(have) or 'none'} (or none, the base)"
        )
    return fn(config)


def get_config(name: str, arg: str | None = None):
    """Config `name` (``configs/<name>.py``), variant `arg` (None: the base)."""
    return _module(name).get_config(arg)


def path(name: str) -> str:
    """The file of config `name`."""
    return os.path.join(DIRECTORY, f"{name}.py")


def describe() -> str:
    """One line per config: its variants and the first line of its docstring."""
    lines = []
    for n in names():
        m = _module(n)
        doc = (m.__doc__ or "").strip().splitlines()
        vs = variants_in(vars(m))
        lines.append(f"  configs/{n}.py[:{'|'.join(vs)}]  {doc[0] if doc else ''}".rstrip())
    return "\n".join(lines)
