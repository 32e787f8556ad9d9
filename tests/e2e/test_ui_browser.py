"""End to end, as a person sees it: `attnrl ui` on a store with real short runs, opened in headless
Chromium — the experiment's runs table, a run's page with its metric charts, and our own tree
page (steps shaded by FCI, branch points marked) rendered without errors. Then SIGTERM to
`attnrl ui` ends the MLflow server and everything it started."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from flows.reaper import carriers
from tests.support import REPO, free_port, mlflow_store, owner_token, train, wait_for_health

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it)")]


def _visit(url: str, tmp_path: Path, png: Path | None = None, budget_ms: int = 20000) -> tuple[str, str]:
    """The page's DOM after its scripts ran (virtual time) and Chromium's console log; with `png`,
    a screenshot of it too, from the same visit."""
    log = tmp_path / f"chromium-{time.monotonic_ns()}.log"
    done = subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1500,1000", f"--virtual-time-budget={budget_ms}",
         "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp_path / 'chromium-profile'}", "--dump-dom",
         *([f"--screenshot={png}"] if png else []), url],
        capture_output=True, text=True, timeout=180,
    )
    log.write_text(done.stderr)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, done.stderr


@pytest.fixture
def two_runs(base_uri, tmp_path):
    uri = mlflow_store(tmp_path)
    runs = [train(uri, "train.iterations=2", "train.eval_every=2", f"seed={seed}", run_name=f"ui-seed{seed}") for seed in (0, 1)]
    return uri, runs


def test_runs_page_run_page_and_tree_page_in_a_real_browser(two_runs, tmp_path):
    uri, runs = two_runs
    port = free_port()
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)
    ui = subprocess.Popen([sys.executable, "-m", "flows.cli", "ui", "--port", str(port)], cwd=REPO, env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for_health(base + "/health", ui, "attnrl ui")
        client = mlflow.MlflowClient(uri)
        experiment_id = client.get_run(runs[0]["run_id"]).info.experiment_id

        # the experiment opens on its training runs (not MLflow's GenAI traces overview), at the
        # address `attnrl ui` prints
        ml = "workflowType=machine_learning"
        runs_page, _ = _visit(f"{base}/#/experiments/{experiment_id}?{ml}", tmp_path, tmp_path / "runs.png")
        assert "ui-seed0" in runs_page and "ui-seed1" in runs_page
        assert "Detect Issues" not in runs_page

        # a run's page: its name, its description, its metrics; and its metric charts
        run_id = runs[0]["run_id"]
        run_page, _ = _visit(f"{base}/#/experiments/{experiment_id}/runs/{run_id}?{ml}", tmp_path)
        assert "ui-seed0" in run_page and "branch criterion fci" in run_page
        assert "eval/heldout/avg_at_1" in run_page and "actor/pg_loss" in run_page
        charts, _ = _visit(f"{base}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics?{ml}", tmp_path, tmp_path / "run.png")
        assert "ui-seed0" in charts and "Model metrics" in charts  # its charts tab (charts render lazily: the screenshot shows them)

        # our tree page: the run's artifact, opened in the browser (the UI's artifact endpoint
        # sends it as a download)
        tree_file = Path(client.download_artifacts(run_id, "trees/iter_00002.html", str(tmp_path)))
        tree_url = tree_file.as_uri()
        tree_page, console = _visit(tree_url, tmp_path, tmp_path / "tree.png", budget_ms=3000)
        assert "<h1>" in tree_page and "FCI" in tree_page
        assert 'class="step bp"' in tree_page, "branch points are marked"
        assert "rgba(31,119,180," in tree_page, "steps are shaded by FCI"
        assert "Uncaught" not in console and "SyntaxError" not in console
        for png in ("runs.png", "run.png", "tree.png"):
            assert (tmp_path / png).stat().st_size > 10_000
        if os.environ.get("ATTNRL_KEEP_SCREENSHOTS"):
            for png in ("runs.png", "run.png", "tree.png"):
                shutil.copy(tmp_path / png, Path(os.environ["ATTNRL_KEEP_SCREENSHOTS"]) / png)
    finally:
        token = owner_token(ui.pid, timeout_s=10)
        ui.send_signal(signal.SIGTERM)
        ui.wait(timeout=60)
    deadline = time.monotonic() + 15
    while carriers(token) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert carriers(token) == [], "SIGTERM to attnrl ui left the MLflow server (or its workers) running"
