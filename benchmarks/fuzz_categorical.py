r"""Fuzz grid of every registered divergence against an extended-precision reference.

For each divergence (the registry's defaults and the parameters in
``tests/_reference.py``'s ``ALL_CASES``), float32 and float64, class counts 2,
10, 1000 and 50,000, logit spreads 1 to 1e4 and three patterns of ``-inf``
logits (none, the same classes in P and Q, independent classes), compares the
jitted ``fdiv.discrete.categorical_divergence`` with ``tests/_reference.py``'s
``np.longdouble`` log-space computation and prints, per divergence: the worst
relative error where both are finite (float32: only where the reference
exceeds 1e-3 in magnitude), the number of NaN where the reference is a number,
and the number of infinities that disagree (finite where the reference is
infinite, or the reverse). A slice of this grid runs in
``tests/test_discrete.py::test_fuzz_slice``.

Usage (the full grid, 4 rows per cell: 1.6 CPU-minutes, 3 minutes on two shared CPU cores;
the 50,000-class column is 1.1 of those CPU-minutes)::

    python -m benchmarks.fuzz_categorical --classes=2,10,1000,50000 --output=runs/fuzz.json
    python -m benchmarks.fuzz_categorical --classes=2,1000
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)
import _reference  # pylint: disable=wrong-import-position

_CLASSES = flags.DEFINE_list("classes", [str(c) for c in _reference.FUZZ_CLASSES], "Class counts.")
_ROWS = flags.DEFINE_integer("rows", 4, "Rows (independent distributions) per grid cell.")
_OUTPUT = flags.DEFINE_string("output", "", "Optional JSON output path.")


def main(argv):
    del argv
    stats = _reference.fuzz_table(classes=tuple(int(c) for c in _CLASSES.value), rows=_ROWS.value)
    print(_reference.format_table(stats))
    if _OUTPUT.value:
        os.makedirs(os.path.dirname(os.path.abspath(_OUTPUT.value)), exist_ok=True)
        with open(_OUTPUT.value, "w") as f:
            json.dump(stats, f, indent=2)


if __name__ == "__main__":
    app.run(main)
