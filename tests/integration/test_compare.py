"""The comparison report and the ablation suite: the table's arithmetic and the plots (fast), the
shipped ablation configs, then a real suite of training runs (2 methods x 2 seeds) compared
through MLflow."""

import csv
import json
import statistics
from pathlib import Path

import mlflow
import pytest
import yaml
from typer.testing import CliRunner

from attnrl_core.config import flatten, load_config
from attnrl_core.errors import AttnRLError
from flows.compare import (
    RunCurve,
    compare,
    group_band,
    load_suite,
    plot,
    slug,
    summarize,
)
from tests.support import REPO
from tests.support import TRAIN_REDUCED

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


def test_band_is_mean_min_max_over_the_steps_every_seed_evaluated():
    a = curve("a0", "g", "0", {0: 0.2, 2: 0.4, 4: 0.5}, {2: 100.0, 4: 180.0}, {2: 1.0, 4: 2.0})
    b = curve("a1", "g", "1", {0: 0.4, 2: 0.8}, {2: 300.0}, {2: 3.0})
    xs, mean, lo, hi = group_band([a, b], "tokens")
    assert xs == [0.0, 200.0] and mean == pytest.approx([0.3, 0.6]) and lo == [0.2, 0.4] and hi == [0.4, 0.8]
    assert group_band([a, b], "iteration")[0] == [0.0, 2.0]
    assert group_band([a, b], "wall")[0] == [0.0, 2.0]


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

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.MlflowClient(uri).create_experiment("empty")
    with pytest.raises(AttnRLError, match="No MLflow experiment named 'nope'.*empty"):
        compare("nope", tracking_uri=uri)
    with pytest.raises(AttnRLError, match="no finished training run"):
        compare("empty", tracking_uri=uri)
    neither = CliRunner().invoke(app, ["compare", "--tracking-uri", uri])
    assert neither.exit_code == 2 and "exactly one of --experiment" in neither.stderr


# ------------------------------------------------------------------------- real runs ----


@pytest.mark.slow
def test_suite_of_real_runs_then_compare_table_plots_and_mlflow_run(base_uri, tmp_path):
    """2 methods x 2 seeds of one iteration: trained once (a re-run skips them), then compared."""
    from flows.cli import app
    from flows.compare import ablations_flow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tiny = (REPO / "experiments/tiny.yaml").read_text()
    (tmp_path / "attnrl.yaml").write_text(tiny)
    (tmp_path / "grpo.yaml").write_text(tiny.replace("method: attnrl", "method: grpo"))
    # one iteration each (it primes the one-step pipeline) with the base evaluation at step 0: two points per curve
    overrides = TRAIN_REDUCED + ["name=compare-test", "train.iterations=1", "batch.prompts=2", "rollout.group_size=2"]
    suite = tmp_path / "suite.yaml"
    suite.write_text(yaml.safe_dump({"configs": ["attnrl.yaml", "grpo.yaml"], "seeds": [0, 1], "overrides": overrides}))

    first = ablations_flow(str(suite), tracking_uri=uri, quiet=True)
    assert first["failed"] == [] and [r["status"] for r in first["runs"]] == ["trained"] * 4
    again = ablations_flow(str(suite), tracking_uri=uri, quiet=True)
    assert [r["status"] for r in again["runs"]] == ["skipped (finished before)"] * 4
    assert [r["run_id"] for r in again["runs"]] == [r["run_id"] for r in first["runs"]]

    out = tmp_path / "report"
    cli = CliRunner().invoke(app, ["compare", "--experiment", "compare-test", "--tracking-uri", uri, "--out", str(out)])
    assert cli.exit_code == 0, cli.output[-3000:]
    assert "attnrl" in cli.stdout and "grpo" in cli.stdout and "±" in cli.stdout and "avg_at_1 in %" in cli.stdout
    at = CliRunner().invoke(app, ["compare", "--experiment", "compare-test", "--tracking-uri", uri, "--out", str(tmp_path / "at"), "--at", "1"])
    assert at.exit_code == 0 and "it 1" in at.stdout, at.output[-3000:]
    with open(tmp_path / "at" / "eval-heldout-avg_at_1.csv") as f:
        assert all(float(r["at_1_mean"]) == pytest.approx(float(r["final_mean"])) for r in csv.DictReader(f))  # iteration 1 is the last
    bad = CliRunner().invoke(app, ["compare", "--experiment", "compare-test", "--tracking-uri", uri, "--at", "-3"])
    assert bad.exit_code == 2 and "--at takes iterations >= 0" in bad.output

    result = compare("compare-test", tracking_uri=uri, out_dir=out)
    client = mlflow.MlflowClient(uri)
    assert sorted(r["group"] for r in result["rows"]) == ["attnrl", "grpo"]
    for row in result["rows"]:
        finals = [client.get_run(rid).data.metrics["eval/heldout/avg_at_1"] for rid in row["run_ids"]]  # latest = iteration 1
        assert row["runs"] == 2 and row["seeds"] == "0,1" and row["iterations"] == 1
        assert row["final_mean"] == pytest.approx(statistics.fmean(finals)) and row["final_std"] == pytest.approx(statistics.stdev(finals))
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
    assert logged == {"eval-heldout-avg_at_1_vs_iteration.png", "eval-heldout-avg_at_1_vs_tokens.png",
                      "eval-heldout-avg_at_1_vs_wall.png", "eval-heldout-avg_at_1.csv", "eval-heldout-avg_at_1.json"}
    # a compare run is not a training run: comparing again sees the same four runs
    assert sum(r["runs"] for r in compare("compare-test", tracking_uri=uri, out_dir=out)["rows"]) == 4
