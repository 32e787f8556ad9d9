"""Checkpoint phase and the checkpoint format.

    <run dir>/iter_000010/
        policy.pt        policy weights (state_dict)
        optimizer.pt     AdamW state
        state.json       TrainSession.capture(): iteration, data cursor, running mean, adaptive
                         batch size, the pending batch of the one-step pipeline, best, MLflow
                         run id, config hash
        config.json      the resolved config
        rng.pt           torch's global RNG state (phases use their own seeded generators)
        MANIFEST.json    sha256 of every file above; written last

A checkpoint is written into `iter_000010.tmp-<pid>/` and renamed into place, so a reader sees
either nothing or a whole folder; a folder whose MANIFEST is missing or does not match its
files (a torn write, a damaged disk) is skipped in favour of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from tasks.phase import phase_task
from tasks.results import CheckpointResult
from tasks.session import TrainSession

FILES = ("policy.pt", "optimizer.pt", "state.json", "config.json", "rng.pt")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(run_dir: Path, s: TrainSession) -> Path:
    """Atomically write the session's state after its last committed iteration."""
    final = run_dir / f"iter_{s.iteration:06d}"
    if is_complete(final):  # a retry after a successful write: nothing to redo
        return final
    tmp = run_dir / f"{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights, optimizer = s.ranks.state_dicts()  # the same on every rank: a checkpoint is world-size free
    torch.save(weights, tmp / "policy.pt")
    torch.save(optimizer, tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps(s.capture()))
    (tmp / "config.json").write_text(json.dumps(s.cfg.model_dump(mode="json"), indent=1))
    torch.save(torch.get_rng_state(), tmp / "rng.pt")
    manifest = {name: _sha256(tmp / name) for name in FILES}
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    for name in (*FILES, "MANIFEST.json"):
        with open(tmp / name, "rb") as f:
            os.fsync(f.fileno())
    if final.exists():  # an incomplete leftover under the final name (never made by us): replace it
        shutil.rmtree(final)
    tmp.rename(final)
    _fsync_dir(run_dir)
    return final


def is_complete(path: Path) -> bool:
    manifest = path / "MANIFEST.json"
    if not manifest.is_file():
        return False
    try:
        expected = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return False
    return set(expected) == set(FILES) and all((path / n).is_file() and _sha256(path / n) == h for n, h in expected.items())


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (torn or temporary folders are ignored)."""
    if not run_dir.is_dir():
        return []
    found = sorted(p for p in run_dir.iterdir() if p.is_dir() and p.name.startswith("iter_") and ".tmp-" not in p.name)
    return [p for p in found if is_complete(p)]


def load(path: Path) -> tuple[dict, dict, dict, dict]:
    """(policy state_dict, optimizer state, session state, config json) of a complete checkpoint."""
    policy = torch.load(path / "policy.pt", map_location="cpu", weights_only=True)
    optim = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True)
    state = json.loads((path / "state.json").read_text())
    cfg = json.loads((path / "config.json").read_text())
    torch.set_rng_state(torch.load(path / "rng.pt", weights_only=True))
    return policy, optim, state, cfg


def export_policy(path: Path, base: str, out: Path) -> None:
    """The policy of the complete checkpoint `path` as a from_pretrained folder `out` (weights and
    tokenizer), built on the run's base policy `base` (a folder or hub id). Written into
    `<out>.tmp-<pid>` and renamed, so `out` is either absent or whole."""
    from attnrl_core.config import Config
    from attnrl_core.policy import load_policy

    cfg = Config.model_validate(json.loads((path / "config.json").read_text()))
    policy, tokenizer = load_policy(base, cfg.model.model_copy(update={"device": "cpu"}))
    policy.load_state_dict(torch.load(path / "policy.pt", map_location="cpu", weights_only=True))
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)


def prune(run_dir: Path, keep_last: int, best: str | None) -> None:
    """Keep the newest `keep_last` complete checkpoints and the best one; drop the rest and any
    leftover temporary folders of dead writers."""
    complete = complete_checkpoints(run_dir)
    keep = {p.name for p in complete[-keep_last:]}
    if best:
        keep.add(best)
    for p in run_dir.iterdir() if run_dir.is_dir() else []:
        if p.is_dir() and p.name.startswith("iter_") and p.name not in keep:
            if ".tmp-" in p.name and p.name.endswith(f".tmp-{os.getpid()}"):
                continue
            if ".tmp-" in p.name or p in complete:
                shutil.rmtree(p, ignore_errors=True)


@phase_task("checkpoint")
def checkpoint(s: TrainSession, iteration: int, run_dir: str) -> CheckpointResult:
    path = write(Path(run_dir), s)
    s.faults.maybe_fail("checkpoint", iteration)
    prune(Path(run_dir), s.cfg.train.keep_last, s.best.get("name"))
    return CheckpointResult(str(path), json.loads((path / "MANIFEST.json").read_text())["policy.pt"])
