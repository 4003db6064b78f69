"""Former name of `fdiv.train.writers` (metric writers), kept so existing imports work.

New code imports `fdiv.train.writers`; this alias avoids a second module named ``metrics``
next to `fdiv.metrics` (sample-quality metrics) in one file.
"""

from fdiv.train.writers import (  # noqa: F401
    LINE_WIDTH,
    METRICS_FILE,
    REEVAL_SUMMARY_FILE,
    SUMMARY_FILE,
    TIMING_KEYS,
    MeanAccumulator,
    MetricWriter,
    eval_lines,
    format_eta,
    progress_line,
    read_metrics,
    read_summary,
    strip_timing,
    write_summary,
)
