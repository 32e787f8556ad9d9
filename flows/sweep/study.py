"""The Optuna side of a sweep: its sampler and pruner, the RDB storage with heartbeats, the study,
its trials counted by state, and the callback that queues a trial again."""

from __future__ import annotations

import socket
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from attnrl_core.errors import AttnRLError
from flows import RUNS_DIR
from flows.sweep.spec import HeartbeatSpec, PrunerSpec, SamplerSpec, SweepSpec


DONE_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)


def make_sampler(spec: SamplerSpec, worker: int = 0, resumed_at: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler of one worker. Its seed mixes the file's seed with the machine and worker index
    (K workers seeded alike would propose the same values) and the study's trial count when it
    starts (a resumed study would otherwise replay the first run's random draws); the same
    command on the same machine draws the same values."""
    if spec.seed is None:
        seed = None
    else:
        machine = zlib.crc32(socket.gethostname().encode())
        seed = int(np.random.SeedSequence([spec.seed, machine, worker, resumed_at]).generate_state(1)[0])
    if spec.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials)


def make_pruner(spec: PrunerSpec) -> optuna.pruners.BasePruner:
    if spec.name == "none":
        return optuna.pruners.NopPruner()
    if spec.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps, interval_steps=spec.interval_steps)
    if spec.name == "percentile":
        return optuna.pruners.PercentilePruner(
            spec.percentile, n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps, interval_steps=spec.interval_steps
        )
    return optuna.pruners.HyperbandPruner(min_resource=spec.min_resource, max_resource=spec.max_resource, reduction_factor=spec.reduction_factor)


def default_storage() -> str:
    return f"sqlite:///{RUNS_DIR / 'optuna.db'}"


def public_url(url: str) -> str:
    """The storage URL with any password masked (it goes into MLflow tags)."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: it will fail to open with its own message
        return url


def open_storage(url: str, heartbeat: HeartbeatSpec, on_stale=None) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage with heartbeats; `on_stale(study, trial)` runs for a dead worker's trial."""
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # several worker processes share one file: wait for its lock instead of failing at once
        engine_kwargs = {"connect_args": {"timeout": 60}}
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" in optuna 5 and are what re-queues a dead worker's trial
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat.interval_s, grace_period=heartbeat.grace_s,
                heartbeat_stale_trial_callback=on_stale,
            )
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; all mean "cannot use this storage"
        raise AttnRLError(
            f"Optuna storage {public_url(url)} cannot be opened ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
            "Pass --storage sqlite:///path/optuna.db or a reachable postgresql://user@host/db."
        ) from None


def open_study(spec: SweepSpec, storage: optuna.storages.RDBStorage, worker: int = 0) -> optuna.Study:
    study = optuna.create_study(
        storage=storage, study_name=spec.study_name, direction=spec.direction, load_if_exists=True, pruner=make_pruner(spec.pruner)
    )
    study.sampler = make_sampler(spec.sampler, worker, resumed_at=len(study.get_trials(deepcopy=False)))
    return study


def study_counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state; 'failed' leaves out dead workers' trials that were re-queued."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} | {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    states = optuna.trial.TrialState
    return {
        "complete": sum(t.state == states.COMPLETE for t in trials),
        "pruned": sum(t.state == states.PRUNED for t in trials),
        "running": sum(t.state == states.RUNNING for t in trials),
        "waiting": sum(t.state == states.WAITING for t in trials),
        "failed": sum(t.state == states.FAIL and t.number not in retried for t in trials),
    }


def retry_callback(max_retry: int) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Queues a copy of a trial (same values, same reported evaluations) that knows which trial
    it retries: Optuna's own mechanism for a dead worker's trial, used for Ctrl-C as well."""
    with warnings.catch_warnings():  # experimental in optuna 5 (as RetryFailedTrialCallback was)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
