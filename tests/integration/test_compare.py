"""The comparison report and the ablation suite: the table's arithmetic, the paired verdicts and
the plots (fast), the report of logged runs through the CLI, suite children dying with their
parent, the shipped ablation configs, then a real suite of training runs (2 methods x 2 seeds,
2 at a time) compared through MLflow."""

import csv
import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from attnrl_core.config import flatten, load_config
from attnrl_core.errors import AttnRLError
from attnrl_core.statistics import t_quantile
from flows.compare import (
    RunCurve,
    compare,
    cpu_count,
    group_band,
    load_suite,
    paired_rows,
    plot,
    slug,
    summarize,
    token_budgets,
)
from tests.support import REPO, TRAIN_REDUCED, cli, cli_env, mlflow_store

ABLATIONS = REPO / "experiments" / "ablations"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def curve(run_id, group, seed, points, tokens=None, wall=None, method="attnrl"):
    return RunCurve(run_id, group, method, seed, points, tokens or {}, wall or {})


# ------------------------------------------------------------------- table and plots (fast) ----


def test_summary_is_mean_and_sample_std_over_seeds_best_final_first():
    runs = [
        # group a: finals 0.6 and 0.7; bests over training steps (step 0 = base is left out) 0.8 and 0.7
        curve("a0", "a", "0", {0: 0.9, 1: 0.8, 2: 0.6}, {1: 100, 2: 250}, {1: 2.0, 2: 5.0}),
        curve("a1", "a", "1", {0: 0.9, 1: 0.5, 2: 0.7}, {1: 110, 2: 230}, {1: 3.0, 2: 7.0}),
        # group b: a single seed, the better final value
        curve("b0", "b", "0", {0: 0.4, 2: 0.75}, {2: 400}, {2: 9.0}, method="grpo"),
    ]
    rows = summarize(runs)
    assert [r["group"] for r in rows] == ["b", "a"]
    b, a = rows
    assert a["runs"] == 2 and a["seeds"] == "0,1" and a["method"] == "attnrl" and a["iterations"] == 2
    assert a["final_mean"] == pytest.approx(0.65) and a["final_std"] == pytest.approx(0.0707106781)  # sqrt(0.005)
    assert a["best_mean"] == pytest.approx(0.75) and a["best_std"] == pytest.approx(0.0707106781)
    assert a["base_mean"] == pytest.approx(0.9)
    assert a["tokens_mean"] == pytest.approx(240.0) and a["wall_s_mean"] == pytest.approx(6.0)
    assert b["final_std"] == 0.0 and b["best_mean"] == 0.75 and b["method"] == "grpo"
    # lower is better: the order flips and 'best' takes the minimum
    low = summarize(runs, direction="minimize")
    assert [r["group"] for r in low] == ["a", "b"] and low[0]["best_mean"] == pytest.approx(0.55)
    # the metric at chosen iterations, over the runs that evaluated there (b skipped iteration 1)
    b, a = summarize(runs, at=[1, 2])
    assert (a["at_1_mean"], a["at_1_runs"]) == (pytest.approx(0.65), 2) and a["at_1_std"] == pytest.approx(0.2121320344)
    assert (b["at_1_mean"], b["at_1_std"], b["at_1_runs"]) == (None, None, 0)
    assert (b["at_2_mean"], b["at_2_std"], b["at_2_runs"]) == (0.75, 0.0, 1)


def test_summary_intervals_are_t_intervals_over_the_runs():
    runs = [curve(f"a{s}", "a", str(s), {0: 0.5, 1: v}) for s, v in enumerate([0.50, 0.54, 0.52])]
    row = summarize(runs)[0]
    half = t_quantile(0.975, 2) * 0.02 / math.sqrt(3)  # sd 0.02 over 3 seeds
    assert row["final_interval"] == "t" and row["final_runs"] == 3
    assert row["final_low"] == pytest.approx(0.52 - half) and row["final_high"] == pytest.approx(0.52 + half)
    boot = summarize(runs, interval="bootstrap")[0]
    assert boot["final_interval"] == "bootstrap" and 0.50 <= boot["final_low"] < 0.52 < boot["final_high"] <= 0.54
    one = summarize([curve("b0", "b", "0", {0: 0.5, 1: 0.6})])[0]
    assert (one["final_low"], one["final_high"], one["final_interval"]) == (None, None, "none")


def test_band_is_the_95_interval_of_the_mean_over_the_steps_every_seed_evaluated():
    a = curve("a0", "g", "0", {0: 0.2, 2: 0.4, 4: 0.5}, {2: 100.0, 4: 180.0}, {2: 1.0, 4: 2.0})
    b = curve("a1", "g", "1", {0: 0.4, 2: 0.8}, {2: 300.0}, {2: 3.0})
    xs, mean, lo, hi = group_band([a, b], "tokens")
    # two seeds: mean -/+ t(0.975, 1) * sd / sqrt(2) = 12.706 * |a - b| / 2
    half = [t_quantile(0.975, 1) * abs(0.2 - 0.4) / 2, t_quantile(0.975, 1) * abs(0.4 - 0.8) / 2]
    assert xs == [0.0, 200.0] and mean == pytest.approx([0.3, 0.6])
    assert lo == pytest.approx([0.3 - half[0], 0.6 - half[1]]) and hi == pytest.approx([0.3 + half[0], 0.6 + half[1]])
    assert group_band([a, b], "iteration")[0] == [0.0, 2.0]
    assert group_band([a, b], "wall")[0] == [0.0, 2.0]
    assert group_band([a], "iteration")[1:] == ([0.2, 0.4, 0.5],) * 3  # one seed: no band


def test_equal_token_budgets_lie_where_every_run_evaluated():
    runs = [
        curve("a0", "a", "0", {0: 0.40, 1: 0.50, 2: 0.60}, {1: 30_000.0, 2: 90_000.0}),
        curve("b0", "b", "0", {0: 0.40, 1: 0.45, 2: 0.50}, {1: 20_000.0, 2: 61_234.0}),
    ]
    assert token_budgets(runs) == [20_000.0, 40_000.0, 61_000.0]  # a third, two thirds, all of the common 61k
    assert token_budgets(runs, count=0) == []
    row = {r["group"]: r for r in summarize(runs, budgets=[40_000.0])}
    assert row["a"]["tok_40000_mean"] == pytest.approx(0.50 + 10 / 60 * 0.10)  # between 30k and 90k
    assert row["b"]["tok_40000_mean"] == pytest.approx(0.45 + 20_000 / 41_234 * 0.05)
    # runs that logged no tokens share no range: no budgets
    assert token_budgets([curve("c0", "c", "0", {0: 0.4, 1: 0.5})]) == []


def test_paired_rows_pair_shared_seeds_final_and_at_budgets():
    # a beats b by 5 points on each of seeds 0-2 (seed 3 is a's alone); c is b plus noise
    finals = {"a": [0.60, 0.62, 0.65, 0.90], "b": [0.55, 0.57, 0.60], "c": [0.56, 0.56, 0.61]}
    runs = [curve(f"{g}{s}", g, str(s), {0: 0.4, 1: v}, {1: 1000.0}) for g, vs in finals.items() for s, v in enumerate(vs)]
    rows = paired_rows(runs, "b", ["a", "b", "c"], budgets=[500.0])
    assert [(r["group"], r["at"]) for r in rows] == [("a", "final"), ("a", "500 tok"), ("c", "final"), ("c", "500 tok")]
    a_final, a_500, c_final, _ = rows
    assert a_final["pairs"] == 3 and a_final["seeds"] == "0,1,2" and a_final["diff_mean"] == pytest.approx(0.05)
    assert a_final["diff_sd"] == pytest.approx(0.0, abs=1e-12) and a_final["p"] < 1e-9 and a_final["verdict"] == "better"
    assert a_500["diff_mean"] == pytest.approx(0.025)  # halfway from the shared base to the finals
    assert c_final["diff_mean"] == pytest.approx(0.01 / 3) and c_final["verdict"].startswith("no difference detectable with 3 seeds")
    assert paired_rows(runs, "b", ["a", "b", "c"], direction="minimize")[0]["verdict"] == "worse"
    # a seed trained twice in a group counts once, its runs averaged
    twice = runs + [curve("a0bis", "a", "0", {0: 0.4, 1: 0.70})]
    assert paired_rows(twice, "b", ["a", "b"])[0]["diff_mean"] == pytest.approx((0.10 + 0.05 + 0.05) / 3)


def test_plot_writes_a_png_per_axis(tmp_path):
    import matplotlib.image

    runs = [curve(f"r{s}", g, str(s), {0: 0.3, 1: 0.3 + 0.1 * s, 2: 0.5 + 0.05 * s}, {1: 50.0, 2: 90.0}, {1: 1.0, 2: 2.0})
            for g in ("attnrl", "grpo") for s in (0, 1)]
    for axis in ("iteration", "tokens", "wall"):
        path = plot(runs, axis, "eval/heldout/avg_at_1", "t", tmp_path / f"{axis}.png")
        assert path.read_bytes()[:8] == PNG_MAGIC
        height, width, _ = matplotlib.image.imread(path).shape
        assert (width, height) == (960, 600)  # 8 x 5 inches at 120 dpi


def test_slug_makes_metric_names_file_safe():
    assert slug("eval/heldout/avg_at_1") == "eval-heldout-avg_at_1"
    assert slug("eval/aime sample/level_3/pass_at_4") == "eval-aime-sample-level_3-pass_at_4"


# ---------------------------------------------------------------------- ablation configs ----

# What each Table 2 row switches relative to full AttnRL (docs/method.md §3, §5, §6; the paper's ablation).
SWITCHES = {
    "treerl": {"method": "treerl", "branch.criterion": "entropy", "expansion.fci_filter": False, "expansion.mode": "uniform", "batch.adaptive": False},
    "attnrl-atb": {"expansion.fci_filter": False, "expansion.mode": "uniform", "batch.adaptive": False},
    "attnrl-atb-adaptive-nofilter": {"expansion.fci_filter": False},
    "attnrl-no-difficulty": {"expansion.mode": "uniform"},
    "attnrl": {},
    "grpo": {"method": "grpo", "advantage": "grpo", "expansion.fci_filter": False, "batch.adaptive": False},
    "random": {"method": "random", "branch.criterion": "random"},
    "earliest": {"method": "earliest", "branch.criterion": "earliest"},
}


def test_full_attnrl_ablation_is_the_tiny_default():
    full = load_config(ABLATIONS / "attnrl.yaml")
    assert full.hash() == load_config(REPO / "experiments/tiny.yaml", ["name=ablations-tiny"]).hash()


@pytest.mark.parametrize("stem", sorted(SWITCHES))
def test_each_ablation_differs_from_full_attnrl_only_in_its_switches(stem):
    full = flatten(load_config(ABLATIONS / "attnrl.yaml"))
    mine = flatten(load_config(ABLATIONS / f"{stem}.yaml"))
    assert {k: v for k, v in mine.items() if full[k] != v} == SWITCHES[stem]


def test_pivot_suites_load_and_the_rules_off_suite_only_turns_the_zeroing_rules_off():
    spec, entries, experiment = load_suite(REPO / "experiments/ablations-pivot/suite.yaml")
    assert sorted(name for name, _ in entries) == sorted(SWITCHES) and experiment == "ablations-pivot"
    spec_off, entries_off, experiment_off = load_suite(REPO / "experiments/ablations-pivot/rules-off.yaml")
    assert [name for name, _ in entries_off] == ["attnrl"] and experiment_off == "ablations-pivot-rules-off"
    on = flatten(load_config(dict(entries)["attnrl"], spec.overrides))
    off = flatten(load_config(entries_off[0][1], spec_off.overrides))
    assert {k: v for k, v in off.items() if on[k] != v} == {
        "name": "ablations-pivot-rules-off", "fci.zero_first_step": False, "fci.zero_answer_summary": False,
    }


def test_suite_runs_every_ablation_with_three_seeds(tmp_path):
    spec, entries, experiment = load_suite(ABLATIONS / "suite.yaml")
    assert sorted(name for name, _ in entries) == sorted(SWITCHES) and spec.seeds == [0, 1, 2]
    assert experiment == "ablations-tiny"
    assert load_suite(ABLATIONS / "suite.yaml", seeds=[5])[0].seeds == [5]

    (tmp_path / "a.yaml").write_text("name: one\n")
    (tmp_path / "b.yaml").write_text("name: two\n")
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump({"configs": ["a.yaml", "b.yaml"], "seeds": [0]}))
    with pytest.raises(AttnRLError, match="share one experiment"):
        load_suite(tmp_path / "suite.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"configs": ["a.yaml"], "seeds": []}))
    with pytest.raises(AttnRLError, match="seeds"):
        load_suite(tmp_path / "bad.yaml")
    with pytest.raises(AttnRLError, match="does not exist"):
        load_suite(tmp_path / "none.yaml")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({"configs": ["a.yaml"], "seeds": [0], "seed": 1}))
    with pytest.raises(AttnRLError, match="unknown field 'seed'"):
        load_suite(tmp_path / "typo.yaml")
    (tmp_path / "broken.yaml").write_text("configs: [a.yaml\nseeds: [0]\n")
    with pytest.raises(AttnRLError, match=r"broken.yaml line \d+ is not valid YAML"):
        load_suite(tmp_path / "broken.yaml")


def test_compare_names_a_missing_experiment_and_the_cli_wants_one_source(tmp_path):
    from flows.cli import app

    uri = mlflow_store(tmp_path)
    mlflow.MlflowClient(uri).create_experiment("empty", artifact_location=(tmp_path / "artifacts").as_uri())
    with pytest.raises(AttnRLError, match="No MLflow experiment named 'nope'.*empty"):
        compare("nope", tracking_uri=uri)
    with pytest.raises(AttnRLError, match="no finished training run"):
        compare("empty", tracking_uri=uri)
    neither = CliRunner().invoke(app, ["compare", "--tracking-uri", uri])
    assert neither.exit_code == 2 and "exactly one of --experiment" in neither.stderr


def log_runs(uri: str, experiment: str, finals: dict[str, list[float]]) -> None:
    """Finished training runs logged as the training flow logs them (tags, the metric by step,
    generated tokens and wall-clock): base 0.40 at step 0, halfway at step 1, the final at 2."""
    client = mlflow.MlflowClient(uri)
    # artifacts next to the store, never in the working directory (an experiment without a
    # location would put them in ./mlruns)
    exp = client.create_experiment(experiment, artifact_location=(Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri())
    for group, values in finals.items():
        for seed, final in enumerate(values):
            rid = client.create_run(exp, tags={"kind": "train", "ablation": group, "method": group, "seed": str(seed)}).info.run_id
            for step, value in ((0, 0.40), (1, (0.40 + final) / 2), (2, final)):
                client.log_metric(rid, "eval/heldout/avg_at_1", value, step=step)
            for step, tokens in ((1, 1000.0 + 100 * seed), (2, 2000.0 + 100 * seed)):
                client.log_metric(rid, "progress/generated_tokens", tokens, step=step)
                client.log_metric(rid, "progress/wall_s", 5.0 * step, step=step)
            client.set_terminated(rid, "FINISHED")


def test_cli_compare_with_a_baseline_prints_verdicts_and_logs_one_html_report(tmp_path):
    from flows.cli import app

    uri = mlflow_store(tmp_path)
    # 'wide' beats 'base' by 4-6 points on every seed; 'noisy' is base give or take 3 points
    log_runs(uri, "verdicts", {"base": [0.50, 0.52, 0.55], "wide": [0.55, 0.57, 0.59], "noisy": [0.53, 0.49, 0.56]})
    out = tmp_path / "report"
    run = CliRunner().invoke(app, ["compare", "--experiment", "verdicts", "--baseline", "base", "--tracking-uri", uri, "--out", str(out)])
    assert run.exit_code == 0, run.output[-3000:]
    lines = run.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80, run.stdout  # readable in 80 columns
    # wide: 57.0 -/+ t(0.975, 2) * 2.0 / sqrt(3) = 4.97 points
    assert "avg_at_1 in %, mean [95% interval] over seeds" in run.stdout and "57.0 [52.0,62.0]" in run.stdout
    # every run evaluated up to 2,000 tokens (the others at 2,100 and 2,200): budgets at a third, two thirds, all of it
    assert "at equal generated tokens" in run.stdout and all(f"{b} tok" in run.stdout for b in ("660", "1.3k", "2k"))
    # wide - base: 5, 5, 4 points: +4.7 -/+ 4.303 * 0.577 / sqrt(3)
    assert "minus base, paired over shared seeds (in points)" in run.stdout and "verdict" in run.stdout and "+4.7 ±1.4" in run.stdout
    assert "better" in run.stdout and "no difference detectable with 3" in run.stdout

    with open(out / "eval-heldout-avg_at_1_vs_base.csv") as f:
        paired = {(r["group"], r["at"]): r for r in csv.DictReader(f)}
    assert list(paired) == [(g, at) for g in ("wide", "noisy") for at in ("final", "660 tok", "1.3k tok", "2k tok")]
    wide = paired[("wide", "final")]
    assert float(wide["diff_mean"]) == pytest.approx(0.0466667) and wide["verdict"] == "better" and wide["pairs"] == "3"
    assert float(wide["diff_low"]) > 0 and float(wide["p"]) < 0.05
    noisy = paired[("noisy", "final")]
    assert float(noisy["diff_low"]) < 0 < float(noisy["diff_high"])
    assert noisy["verdict"].startswith("no difference detectable with 3 seeds; about ") and noisy["verdict"].endswith(" points")

    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name("verdicts")
    (compare_run,) = client.search_runs([exp.experiment_id], filter_string="tags.kind = 'compare'")
    assert compare_run.data.tags["baseline"] == "base" and compare_run.info.status == "FINISHED"
    logged = {Path(a.path).name for a in client.list_artifacts(compare_run.info.run_id, "compare")}
    assert {"report.html", "eval-heldout-avg_at_1.csv", "eval-heldout-avg_at_1.json", "eval-heldout-avg_at_1_vs_base.csv"} <= logged
    page = Path(client.download_artifacts(compare_run.info.run_id, "compare/report.html", str(tmp_path / "dl"))).read_text()
    assert page.count('src="data:image/png;base64,') == 3  # the three plots, in the page
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page  # nothing to fetch
    assert "better" in page and "no difference detectable with 3 seeds" in page and compare_run.info.run_id in page

    unknown = CliRunner().invoke(app, ["compare", "--experiment", "verdicts", "--baseline", "nope", "--tracking-uri", uri])
    assert unknown.exit_code == 2 and "Baseline 'nope' is no group" in unknown.stderr and "base, noisy, wide" in unknown.stderr
    workers = CliRunner().invoke(app, ["compare", "--experiment", "verdicts", "--workers", "2", "--tracking-uri", uri])
    assert workers.exit_code == 2 and "--workers goes with --suite" in workers.stderr


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")  # a zombie nobody reaped yet is dead too


def _wait_gone(pids, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_suite_children_die_with_their_parent(tmp_path):
    """kill -9 of the suite process kills its children (PR_SET_PDEATHSIG); SIGTERM stops them,
    their own children (process group) included."""
    sleeper = [sys.executable, "-c", "import time; time.sleep(300)"]
    parent = subprocess.Popen(
        [sys.executable, "-c", "import os, sys, time; from pathlib import Path; from flows.compare import start_child; "
         f"p = start_child({sleeper!r}, dict(os.environ), Path(sys.argv[1])); print(p.pid, flush=True); time.sleep(300)",
         str(tmp_path / "child.log")],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
    )
    child = int(parent.stdout.readline())
    assert os.getpgid(child) == child  # a process group of its own
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert _wait_gone([child]), "the child outlived its parent"

    # through the pool: a child with a child of its own; SIGTERM to the suite process
    pids = tmp_path / "pids"
    spawner = (
        "import subprocess, sys, time; g = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        f"open({str(pids)!r}, 'w').write(f'{{__import__(\"os\").getpid()}} {{g.pid}}'); time.sleep(300)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from flows.compare import ChildTask, run_pool; "
         f"run_pool([ChildTask('spawner', 'sleep', [sys.executable, '-c', {spawner!r}], lambda code, s: print('exit', code, flush=True))], "
         "workers=1, threads=1, home=Path(sys.argv[1]), say=print)", str(tmp_path / "home")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while not (pids.is_file() and len(pids.read_text().split()) == 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    child, grandchild = map(int, pids.read_text().split())
    assert os.getpgid(grandchild) == child
    parent.send_signal(signal.SIGTERM)
    assert parent.wait(timeout=60) == 128 + signal.SIGTERM, parent.stderr.read()[-2000:]
    assert _wait_gone([child, grandchild]), "SIGTERM left a child or grandchild running"
    assert not (tmp_path / "home" / "prefect" / "spawner").exists()  # its Prefect home is removed


# ------------------------------------------------------------------------- real runs ----


@pytest.mark.slow
def test_suite_of_real_runs_in_parallel_then_compare_table_plots_verdicts_and_mlflow_run(base_uri, tmp_path, prefect_api):
    """2 methods x 2 seeds of one iteration through `attnrl compare --suite --workers 2`: trained
    two at a time in child processes, compared against a baseline; a re-run trains nothing and
    resumes (in the same MLflow run) the one run that did not finish."""
    from flows.cli import app

    uri = mlflow_store(tmp_path)
    tiny = (REPO / "experiments/tiny.yaml").read_text()
    (tmp_path / "attnrl.yaml").write_text(tiny)
    (tmp_path / "grpo.yaml").write_text(tiny.replace("method: attnrl", "method: grpo"))
    # one iteration each (it primes the one-step pipeline) with the base evaluation at step 0: two points per curve
    overrides = TRAIN_REDUCED + ["name=compare-test", "train.iterations=1", "batch.prompts=2", "rollout.group_size=2"]
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"configs": ["attnrl.yaml", "grpo.yaml"], "seeds": [0, 1], "overrides": overrides}))
    command = ["compare", "--suite", str(suite), "--workers", "2", "--baseline", "attnrl", "--tracking-uri", uri, "--out", str(tmp_path / "suite-report")]
    env = cli_env(uri, prefect_api)

    first = cli(*command, env=env, timeout=1800)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stderr.count(": train started") == 4 and "resume" not in first.stderr
    threads = max(1, cpu_count() // 2)  # cores // workers each
    assert first.stderr.count("started (pid") == 4 and all(f"{threads} thread" in ln for ln in first.stderr.splitlines() if "started (pid" in ln)
    client = mlflow.MlflowClient(uri)
    experiment_id = client.get_experiment_by_name("compare-test").experiment_id

    def train_runs():
        return client.search_runs([experiment_id], filter_string="tags.kind = 'train'")

    runs = train_runs()
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted((r.data.tags["ablation"], r.data.tags["seed"]) for r in runs) == [("attnrl", "0"), ("attnrl", "1"), ("grpo", "0"), ("grpo", "1")]
    assert {r.data.tags["suite"] for r in runs} == {"suite"}
    # two at a time: the second child started before the first one ended. (Not the MLflow runs'
    # spans: a one-iteration run lasts ~2 s, less than the children's start-up jitter.)
    events = [ln for ln in first.stderr.splitlines() if ": train started (pid" in ln or re.search(r"suite: \S+ done after", ln)]
    assert ": train started" in events[1], events
    # the table, then the paired differences with a verdict for each point
    assert "attnrl" in first.stdout and "grpo" in first.stdout and "avg_at_1 in %" in first.stdout and "[" in first.stdout
    assert "minus attnrl, paired over shared seeds" in first.stdout and "verdict" in first.stdout
    verdict_lines = [ln for ln in first.stdout.splitlines() if re.search(r"\b(better|worse|no difference detectable)\b", ln)]
    assert len(verdict_lines) >= 2, first.stdout  # final + at least one token budget for grpo
    compare_runs = client.search_runs([experiment_id], filter_string="tags.kind = 'compare'")
    assert len(compare_runs) == 1 and compare_runs[0].data.tags["baseline"] == "attnrl"
    logged = {Path(a.path).name for a in client.list_artifacts(compare_runs[0].info.run_id, "compare")}
    assert "report.html" in logged and "eval-heldout-avg_at_1_vs_attnrl.csv" in logged
    page = (tmp_path / "suite-report" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "verdict" in page

    # a run that did not finish (its process died, the run says FAILED) is resumed, not restarted;
    # the three finished ones are not trained again
    unfinished = next(r for r in runs if r.data.tags["ablation"] == "grpo" and r.data.tags["seed"] == "1")
    client.set_terminated(unfinished.info.run_id, status="FAILED")
    again = cli(*command, env=env, timeout=1800)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "train started" not in again.stderr and again.stderr.count(f"grpo-s1: resume {unfinished.info.run_id} started") == 1
    runs_again = train_runs()
    assert sorted(r.info.run_id for r in runs_again) == sorted(r.info.run_id for r in runs)  # nothing new
    assert {r.info.status for r in runs_again} == {"FINISHED"}

    out = tmp_path / "report"
    cli_run = CliRunner().invoke(app, ["compare", "--experiment", "compare-test", "--tracking-uri", uri, "--out", str(out)])
    assert cli_run.exit_code == 0, cli_run.output[-3000:]
    assert "attnrl" in cli_run.stdout and "grpo" in cli_run.stdout and "avg_at_1 in %" in cli_run.stdout and "verdict" not in cli_run.stdout
    at = CliRunner().invoke(app, ["compare", "--experiment", "compare-test", "--tracking-uri", uri, "--out", str(tmp_path / "at"), "--at", "1"])
    assert at.exit_code == 0 and "it 1" in at.stdout, at.output[-3000:]
    with open(tmp_path / "at" / "eval-heldout-avg_at_1.csv") as f:
        assert all(float(r["at_1_mean"]) == pytest.approx(float(r["final_mean"])) for r in csv.DictReader(f))  # iteration 1 is the last
    bad = CliRunner().invoke(app, ["compare", "--experiment", "compare-test", "--tracking-uri", uri, "--at", "-3"])
    assert bad.exit_code == 2 and "--at takes iterations >= 0" in bad.output

    result = compare("compare-test", tracking_uri=uri, out_dir=out)
    assert sorted(r["group"] for r in result["rows"]) == ["attnrl", "grpo"] and result["paired"] == [] and result["rate"]
    for row in result["rows"]:
        finals = [client.get_run(rid).data.metrics["eval/heldout/avg_at_1"] for rid in row["run_ids"]]  # latest = iteration 1
        assert row["runs"] == 2 and row["seeds"] == "0,1" and row["iterations"] == 1
        assert row["final_mean"] == pytest.approx(statistics.fmean(finals)) and row["final_std"] == pytest.approx(statistics.stdev(finals))
        half = t_quantile(0.975, 1) * statistics.stdev(finals) / math.sqrt(2)
        assert row["final_low"] == pytest.approx(row["final_mean"] - half) and row["final_high"] == pytest.approx(row["final_mean"] + half)
        tags = [client.get_run(rid).data.tags for rid in row["run_ids"]]
        assert {t["ablation"] for t in tags} == {row["group"]} and {t["method"] for t in tags} == {row["group"]}
        assert row["tokens_mean"] > 0 and row["wall_s_mean"] > 0
    for axis, path in result["plots"].items():
        assert Path(path).read_bytes()[:8] == PNG_MAGIC, axis
    with open(result["table"]) as f:
        table = list(csv.DictReader(f))
    assert [r["group"] for r in table] == [r["group"] for r in result["rows"]]
    assert json.loads((out / "eval-heldout-avg_at_1.json").read_text())["rows"][0]["group"] == result["rows"][0]["group"]

    run = client.get_run(result["mlflow_run_id"])
    assert run.data.tags["kind"] == "compare" and run.info.status == "FINISHED"
    logged = {Path(a.path).name for a in client.list_artifacts(result["mlflow_run_id"], "compare")}
    assert logged == {"eval-heldout-avg_at_1_vs_iteration.png", "eval-heldout-avg_at_1_vs_tokens.png", "eval-heldout-avg_at_1_vs_wall.png",
                      "eval-heldout-avg_at_1.csv", "eval-heldout-avg_at_1.json", "report.html"}
    # a compare run is not a training run: comparing again sees the same four runs
    assert sum(r["runs"] for r in compare("compare-test", tracking_uri=uri, out_dir=out)["rows"]) == 4


def test_compare_defaults_to_the_runs_objective_metric(tmp_path):
    from flows.cli import app

    uri = mlflow_store(tmp_path)
    log_runs(uri, "objective", {"a": [0.5, 0.6], "b": [0.4, 0.5]})
    client = mlflow.MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("objective").experiment_id])
    plain = CliRunner().invoke(app, ["compare", "--experiment", "objective", "--tracking-uri", uri, "--out", str(tmp_path / "r1")])
    assert plain.exit_code == 0 and "eval/heldout/avg_at_1" in plain.stdout  # untagged runs: the former default
    for run in runs:
        client.set_tag(run.info.run_id, "objective_metric", "eval/mean/avg")
    client.set_tag(runs[0].info.run_id, "objective_metric", "eval/aime/avg_at_1")
    mixed = CliRunner().invoke(app, ["compare", "--experiment", "objective", "--tracking-uri", uri, "--out", str(tmp_path / "r2")])
    assert mixed.exit_code == 2 and "different objectives" in mixed.stderr and "--metric" in mixed.stderr
