"""Streaming on vLLM: the requests of one call, stepped on the engine, each one's new text handed on as it comes.

`LLM.generate` returns only when every request is finished (it asks the engine for final outputs only). Here
the requests are added to `LLM.llm_engine` with cumulative outputs, and the engine is stepped until they are
done; other requests of the engine are left alone, and if anything fails the requests added here are aborted.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

from bricks.streaming import TextDeltas

__all__ = ["stream_engine"]

_ids = itertools.count()


def stream_engine(engine, tokenizer, prompts: Sequence, params: Sequence, loras: Sequence,
                  on_delta: Callable[[int, str], None]) -> list[str]:
    """Run `prompts` (vLLM prompts, with their SamplingParams and LoRARequests or None) on `engine` (an
    LLMEngine); `on_delta(i, text)` gets prompt i's new text; returns each prompt's whole text."""
    from vllm.sampling_params import RequestOutputKind

    rows: dict[str, int] = {}
    texts = [TextDeltas(tokenizer) for _ in prompts]
    finished = [False] * len(prompts)
    try:
        for i, (prompt, param, lora) in enumerate(zip(prompts, params, loras)):
            param.output_kind = RequestOutputKind.CUMULATIVE
            rid = f"brickwork-stream-{next(_ids)}"
            rows[rid] = i
            engine.add_request(rid, prompt, param, lora_request=lora)
        while not all(finished) and engine.has_unfinished_requests():
            for out in engine.step():
                i = rows.get(out.request_id)
                if i is None or finished[i]:
                    continue
                ids = out.outputs[0].token_ids  # every token so far
                delta = texts[i].push(ids[len(texts[i].ids):])
                if out.finished:
                    finished[i] = True
                    delta += texts[i].flush()
                if delta:
                    on_delta(i, delta)
    finally:
        left = [rid for rid, i in rows.items() if not finished[i]]
        if left:
            engine.abort_request(left)
    if not all(finished):
        raise RuntimeError(f"the vLLM engine stopped with {finished.count(False)} of {len(prompts)} requests unfinished")
    return [t.sent for t in texts]
