"""Prefect flows of the platform: warm start, training, evaluation, sweeps.

Importing this package sets quiet, offline defaults for the stack (each only if the user has not
set it): a project-local Prefect home, no telemetry, no hub downloads. They must be in place
before prefect / mlflow / transformers are imported, hence here.
"""

import importlib.abc
import os
import sys
from pathlib import Path

RUNS_DIR = Path(os.environ.get("ATTNRL_HOME", "runs")).absolute()

_DEFAULTS = {
    "PREFECT_HOME": str(RUNS_DIR / "prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    # Nothing may download weights or data at run time: a hub id must already be cached.
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}
for _key, _value in _DEFAULTS.items():
    os.environ.setdefault(_key, _value)


class _DeepSpeedAccelerator(importlib.abc.MetaPathFinder):
    """Sets DS_ACCELERATOR (unless the user has) just before `deepspeed` is first imported.

    transformers imports DeepSpeed when it is installed, whose accelerator probe warns on every
    CPU-only start; this is the probe's own answer, decided up front. Deciding it needs torch,
    which `import flows` must not load (the CLI's --help and `attnrl config` would pay seconds for
    it), so it is decided when deepspeed is about to be imported, by whichever module imports it.
    The finder only looks at the name and then steps aside: it never finds a module itself.
    """

    def find_spec(self, name, path=None, target=None):
        if name == "deepspeed":
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            if "DS_ACCELERATOR" not in os.environ:
                import torch

                os.environ["DS_ACCELERATOR"] = "cuda" if torch.cuda.is_available() else "cpu"
        return None


if "DS_ACCELERATOR" not in os.environ and "deepspeed" not in sys.modules:
    sys.meta_path.insert(0, _DeepSpeedAccelerator())
# Prefect creates its home folder but not the parents of it.
Path(os.environ["PREFECT_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
