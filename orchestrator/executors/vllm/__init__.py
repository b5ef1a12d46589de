"""The vLLM executor: one engine, LoRA bricks as LoRARequests, FFN masks patched into vLLM's workers.

`executor` (with `merges`) runs in the caller's process; `worker` (and its `masks`, `lora_ops`) run inside vLLM's
worker processes through `worker_extension_cls`. `compat` probes every vLLM internal these touch. Only `executor`,
`worker` and `compat` import vllm, each when used.
"""
