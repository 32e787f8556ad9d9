"""bench/gpu.py stays runnable: its --tiny smoke check (the same code as the GPU run) on CPU."""

import importlib.util
import json

from tests.support import REPO


def test_gpu_bench_tiny_smoke_check(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--tiny", "--out", str(tmp_path / "gpu.json")]) == 0
    out = json.loads((tmp_path / "gpu.json").read_text())
    assert out["fci_vs_plain"]["time_ratio"] > 0 and out["generation_hf"]["tokens_per_s"] > 0
    assert out["ppo_update"]["seconds"] > 0 and out["update_pass"]["chunked"]["seconds"] > 0
    assert bench.PAPER["num_hidden_layers"] == 28 and bench.SIZES["paper"]["prompt"] + bench.SIZES["paper"]["response"] == 9216
