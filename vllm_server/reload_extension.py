"""vLLM worker extension: in-place weight reload that also refreshes prepacked LM heads.

Loaded into vLLM's worker processes by name (`LLM(worker_extension_cls=
"reload_extension.PolicyReloadExtension")`, with this folder on PYTHONPATH); its methods become
methods of the worker, callable as `llm.collective_rpc("reload_policy_weights", args=(folder,))`.

Why not plain `collective_rpc("reload_weights", ...)`: vLLM 0.32's layerwise reload skips a tied
lm_head (the checkpoint has no lm_head.weight; it shares the embedding's tensor, which IS
updated), so the head's post-load processing never re-runs. On the CPU backend that processing
prepacks the head's GEMM weight, so after a reload the model kept computing logits with the OLD
embedding: hidden states of the new policy times the old head (measured here: every linear layer
and the embedding held the new weights, the samples matched neither policy, and a transformers
model with new weights plus the old head reproduced them exactly). Re-running
`process_weights_after_loading` of every unquantized embedding/LM-head module fixes it; on GPUs
that step is a no-op, so the fix costs nothing there.
"""

from vllm.model_executor.layers.vocab_parallel_embedding import UnquantizedEmbeddingMethod


class PolicyReloadExtension:
    def reload_policy_weights(self, folder: str) -> None:
        self.reload_weights(weights_path=folder)
        for module in self.model_runner.get_model().modules():
            method = getattr(module, "quant_method", None)
            if isinstance(method, UnquantizedEmbeddingMethod):
                method.process_weights_after_loading(module)
