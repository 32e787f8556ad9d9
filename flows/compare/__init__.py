"""Side-by-side comparison of finished training runs: ablations and baselines over seeds.

    attnrl compare --experiment ablations-tiny [--metric eval/heldout/avg_at_1] [--baseline treerl]
    attnrl compare --suite experiments/ablations/suite.yaml --workers 2   # first run what is missing

Runs are grouped by their `ablation` tag (set by the suite runner) or else their `method` tag.
Per group: the mean over seeds and its 95% interval (attnrl_core.statistics.mean_interval:
the t-interval, or the percentile bootstrap for 5-29 highly skewed seeds or when asked) of the
metric's final value and of its best value over the training evaluations (the base evaluation
at step 0 is shown apart), plus generated tokens and wall-clock at the end.

At equal generated tokens: each run's metric interpolated (linearly between its evaluations) at
a few round token budgets inside the range every run covers, with the same intervals. With a
baseline group, every other group gets the paired difference to it over the seeds both have
(final and at each budget): its t-interval, p-value and verdict (better / worse / how many seeds
would tell). Three PNG plots show the metric against iteration, generated tokens and wall-clock
seconds: one line per group (mean over seeds) in its 95% band. The table (CSV + JSON), the
paired differences (CSV), the plots and one self-contained HTML report holding all of them are
logged to a new run of kind "compare" in the experiment. Sweep trials (tag `sweep`) and
unfinished, failed or pruned runs are left out.

A suite (`ablations_flow`) trains its missing config x seed runs in child processes, K at a time.
"""

# The names the rest of the code imports from flows.compare (the CLI, the tests, a suite's child
# `from flows.compare import train_child`), and the rest of what flows/compare.py offered before it
# became this package. Modules import each other in this order; none imports one after it.
from flows.compare.curves import TOKENS, WALL, X_AXES, RunCurve, by_group, group_of, load_curves
from flows.compare.summary import (
    Interval,
    group_band,
    interval_fields,
    paired_rows,
    seed_values,
    summarize,
    token_budgets,
    token_range,
    tokens_label,
)
from flows.compare.report import (
    PAIRED_COLUMNS,
    PART_COLUMNS,
    TABLE_COLUMNS,
    fmt_diff,
    fmt_interval,
    fmt_p,
    fmt_value,
    plot,
    report_html,
    slug,
    write_csv,
)
from flows.compare.children import (
    PR_SET_PDEATHSIG,
    REPO_ROOT,
    ChildTask,
    child_env,
    cpu_count,
    exited,
    reap,
    run_pool,
    start_child,
    stop_children,
)
from flows.compare.suite import SuiteJob, SuiteSpec, load_suite, plan_suite, run_suite_jobs, train_child
from flows.compare.flow import ablations_flow, compare

__all__ = [
    "PAIRED_COLUMNS",
    "PART_COLUMNS",
    "PR_SET_PDEATHSIG",
    "REPO_ROOT",
    "TABLE_COLUMNS",
    "TOKENS",
    "WALL",
    "X_AXES",
    "ChildTask",
    "Interval",
    "RunCurve",
    "SuiteJob",
    "SuiteSpec",
    "ablations_flow",
    "by_group",
    "child_env",
    "compare",
    "cpu_count",
    "exited",
    "fmt_diff",
    "fmt_interval",
    "fmt_p",
    "fmt_value",
    "group_band",
    "group_of",
    "interval_fields",
    "load_curves",
    "load_suite",
    "paired_rows",
    "plan_suite",
    "plot",
    "reap",
    "report_html",
    "run_pool",
    "run_suite_jobs",
    "seed_values",
    "slug",
    "start_child",
    "stop_children",
    "summarize",
    "token_budgets",
    "token_range",
    "tokens_label",
    "train_child",
    "write_csv",
]
