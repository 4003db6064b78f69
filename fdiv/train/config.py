"""Config checks and conversion of a config into typed dataclasses.

Experiments receive an `ml_collections.ConfigDict` (or any nested mapping); networks and
estimators never do (DESIGN.md). At the experiment boundary:

- `check_config(config)` rejects NaN anywhere in the config (a NaN learning rate or weight is
  always a mistake and would otherwise surface as a NaN loss hours later);
- `to_dataclass(Cls, config.model)` builds a (frozen) dataclass, nested dataclass fields
  included, rejecting unknown keys and listing the valid ones (as vdm converts its config
  before the model sees it);
- `LoopOptions.from_config(config)` reads the loop fields shared by all experiments;
- `ConfigError` carries one message per bad field, so that a user sees every mistake of a
  config at once, in one line, before any work starts.

Shared top-level config fields read by `LoopOptions.from_config` (all optional):
``num_steps``, ``log_every``, ``eval_every``, ``checkpoint_every_steps``,
``checkpoint_every_secs``, ``keep_checkpoints``, ``async_checkpoints``, ``resume``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping


class ConfigError(ValueError):
    """A config with one or more bad fields.

    Attributes:
      problems: one message per bad field, each naming the field and the fix.
    """

    def __init__(self, problems: list[str] | tuple[str, ...] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


def _as_mapping(config: Any) -> Mapping:
    if hasattr(config, "to_dict"):
        return config.to_dict()
    if isinstance(config, Mapping):
        return config
    raise ValueError(f"expected a ConfigDict or mapping, got {type(config).__name__}.")


def _walk(x: Any, path: str):
    if hasattr(x, "to_dict"):
        x = x.to_dict()
    if isinstance(x, Mapping):
        for k, v in x.items():
            yield from _walk(v, f"{path}.{k}" if path else str(k))
    elif isinstance(x, (list, tuple)):
        for i, v in enumerate(x):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, x


def check_config(config: Any) -> None:
    """Raises ValueError naming every field whose value is NaN (floats, in lists/tuples too)."""
    bad = [p for p, v in _walk(config, "") if isinstance(v, float) and math.isnan(v)]
    if bad:
        raise ValueError(
            f"config field(s) {', '.join('config.' + b for b in bad)} are NaN; set a number."
        )


def to_dataclass(cls: type, config: Any, *, name: str | None = None) -> Any:
    """Builds dataclass `cls` from a ConfigDict/mapping; nested dataclass fields recurse.

    Missing keys take the dataclass defaults; lists become tuples for tuple-typed fields.

    Raises:
      ValueError: on a key that is not a field of `cls` (the message lists the fields), or a
        missing field without default.
    """
    name = name or cls.__name__
    data = dict(_as_mapping(config))
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {unknown}; valid fields: {sorted(fields)}.")
    kwargs = {}
    for k, v in data.items():
        t = hints.get(k)
        if (
            isinstance(t, type)
            and dataclasses.is_dataclass(t)
            and (isinstance(v, Mapping) or hasattr(v, "to_dict"))
        ):
            v = to_dataclass(t, v, name=f"{name}.{k}")
        elif isinstance(v, list) and typing.get_origin(t) is tuple:
            v = tuple(v)
        kwargs[k] = v
    missing = [
        f.name
        for f in fields.values()
        if f.name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ValueError(f"{name}: missing required field(s) {missing}.")
    return cls(**kwargs)


RESUME_MODES = ("auto", "restart")


def loop_problems(values: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Messages for the bad loop fields in `values` (a mapping of `LoopOptions` fields).

    `prefix` is prepended to each field name (e.g. ``"config.teacher."``).
    """
    out = []
    for f in ("num_steps", "log_every", "eval_every", "checkpoint_every_steps", "keep_checkpoints"):
        if f in values and (not isinstance(values[f], int) or isinstance(values[f], bool)):
            out.append(f"{prefix}{f} must be an int, got {values[f]!r}")
    if out:
        return out

    def bad(f, ok, need):
        if f in values and not ok(values[f]):
            out.append(f"{prefix}{f}={values[f]!r} must be {need}")

    bad("num_steps", lambda v: v >= 0, ">= 0")
    bad("log_every", lambda v: v >= 1, ">= 1")
    bad("eval_every", lambda v: v >= 0, ">= 0 (0: only at the end)")
    bad("checkpoint_every_steps", lambda v: v >= 0, ">= 0 (0: only at the end)")
    bad("keep_checkpoints", lambda v: v >= 1, ">= 1")
    bad(
        "checkpoint_every_secs",
        lambda v: v is None or (isinstance(v, (int, float)) and v >= 0),
        ">= 0 (0: never) or None",
    )
    bad(
        "resume",
        lambda v: v in RESUME_MODES,
        f"one of {RESUME_MODES} ('restart' archives the old run and starts again)",
    )
    return out


@dataclasses.dataclass(frozen=True)
class LoopOptions:
    """Options of `fdiv.train.fit`.

    Attributes:
      num_steps: total loop steps.
      log_every: steps between progress lines / ``metrics.jsonl`` records.
      eval_every: steps between `eval_fn` calls (0: only at the end).
      checkpoint_every_steps: save at multiples of this (0: only at the end).
      checkpoint_every_secs: also save when this much wall time passed (checked at log steps;
        0 or None: never by time).
      keep_checkpoints: most recent checkpoints kept.
      async_checkpoints: write checkpoints in the background.
      resume: ``"auto"`` continues from the workdir's checkpoints (a checkpoint of another
        config is an error); ``"restart"`` first moves the workdir's previous run to
        ``<workdir>/archive/<UTC time>/`` and starts from step 0.
    """

    num_steps: int
    log_every: int = 100
    eval_every: int = 0
    checkpoint_every_steps: int = 1000
    checkpoint_every_secs: float | None = 600.0
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    resume: str = "auto"

    def __post_init__(self):
        problems = loop_problems(dataclasses.asdict(self), prefix="LoopOptions.")
        if problems:
            raise ValueError("; ".join(problems) + ".")

    @classmethod
    def from_config(cls, config: Any) -> "LoopOptions":
        """Reads the fields of this class that are present at the top level of `config`."""
        data = _as_mapping(config)
        names = [f.name for f in dataclasses.fields(cls)]
        return cls(**{k: data[k] for k in names if k in data})
