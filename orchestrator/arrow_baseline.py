"""Arrow as a baseline router for `brickwork eval --pipeline --router arrow`.

Arrow (Ostapenko et al., 2024, https://huggingface.co/papers/2405.11157; PEFT's `create_arrow_model`) routes
training-free, per token and per layer, over a set of LoRA adapters: each adapter's prototype is the top right
singular vector of its B @ A, and every token's hidden state picks the `top_k` adapters whose prototypes it
aligns with best (absolute dot product), mixed by a softmax at `router_temperature`.

Here Arrow routes over every lora-kind brick of the library (their active versions; mask bricks have no LoRA
weights and are left out), loaded into one Arrow model over the base model. Each row runs as ONE prompt, the
whole instruction with the toy world's raw template (`bricks.prompt.DEFAULT_TEMPLATE`: `{instruction}\\nIn:
{input}\\nOut: `), greedy, 40 new tokens: no decomposition, no chaining, no masks. Its exact match per skill
is reported in the same shape as the brickwork pipeline's, so the two can be compared side by side.

Settings: PEFT's defaults, top_k=3 (capped at the number of LoRA bricks) and router_temperature=1.0, with no
GenKnowSub (the library holds no general-knowledge adapters to subtract). Arrow needs every adapter to share its
rank and target modules, all of them linear layers; when the library's LoRA bricks do not, or there are none,
`arrow_scores` raises one `ArrowUnavailable` saying why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bricks.errors import BrickworkError

__all__ = ["ARROW_TOP_K", "ARROW_TEMPERATURE", "ROUTERS", "ArrowUnavailable", "arrow_scores", "lora_bricks"]

ARROW_TOP_K = 3
ARROW_TEMPERATURE = 1.0
ROUTERS = ("brickwork", "arrow")
MAX_NEW_TOKENS = 40


class ArrowUnavailable(BrickworkError):
    """PEFT's Arrow cannot run on this model and these LoRA bricks."""


def lora_bricks(library) -> list:
    """The active version of every adapter-role (LoRA) brick of `library`, sorted by id."""
    from bricks.kinds import get_kind

    return [b for b in library.list() if get_kind(b.kind).role == "adapter"]


def build_arrow_model(base, folders: Sequence[Path], *, top_k: int = ARROW_TOP_K,
                      router_temperature: float = ARROW_TEMPERATURE):
    """One Arrow model over `base` routing among the LoRA adapters in `folders` (an ArrowUnavailable if PEFT
    refuses them)."""
    try:
        from peft import ArrowConfig, create_arrow_model
    except ImportError as e:
        raise ArrowUnavailable(f"the installed PEFT has no Arrow support ({e}); PEFT >= 0.18 provides it") from None
    if not folders:
        raise ArrowUnavailable("the library holds no LoRA bricks for Arrow to route over")
    config = ArrowConfig(top_k=min(top_k, len(folders)), router_temperature=router_temperature, rng_seed=0)
    try:
        model = create_arrow_model(base, [str(f) for f in folders], config)
    except (ValueError, TypeError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ArrowUnavailable(f"PEFT's Arrow cannot route over these LoRA bricks: {first}") from None
    return model.eval()


def arrow_scores(model_dir: Path, library: Path | None, rows: Sequence[dict], *, device: str = "auto",
                 top_k: int = ARROW_TOP_K, router_temperature: float = ARROW_TEMPERATURE, batch_size: int = 64,
                 progress: Callable[[int], None] | None = None):
    """Exact match per skill (`bricks.evaluation.score_outputs`) when an Arrow model over the library's LoRA
    bricks answers every row in one greedy prompt, and a summary: the router, the bricks it routed over, its
    settings and the overall exact match. `progress(n)` is called after every `n` rows answered."""
    from bricks.evaluation import score_outputs
    from bricks.generation import generate_texts
    from bricks.lora import LoraBrick
    from bricks.model_io import load_model, load_tokenizer
    from bricks.prompt import DEFAULT_TEMPLATE
    from orchestrator.factory import open_library

    bricks = lora_bricks(open_library(library))
    if not bricks:  # before the model loads: one line, nothing else on stderr
        raise ArrowUnavailable("the library holds no LoRA bricks for Arrow to route over")
    tokenizer, base = load_tokenizer(model_dir), load_model(model_dir, device=device)
    for b in bricks:  # a brick built for another model: one clear line, before PEFT reads its tensors
        try:
            LoraBrick.from_dir(b.path, b.manifest).check_fits(base.config)
        except BrickworkError as e:
            raise ArrowUnavailable(f"LoRA brick {b.id!r} does not fit the model: {e}") from None
    net = build_arrow_model(base, [b.path for b in bricks], top_k=top_k, router_temperature=router_temperature)
    outputs: list[str] = []
    for i in range(0, len(rows), batch_size):
        part = rows[i:i + batch_size]
        outputs += generate_texts(net, tokenizer, [DEFAULT_TEMPLATE.render(r["instruction"], r.get("input", ""))
                                                   for r in part], max_new_tokens=MAX_NEW_TOKENS,
                                  batch_size=batch_size)
        if progress is not None:
            progress(len(part))
    exact = sum(o.strip() == r["output"] for o, r in zip(outputs, rows)) / max(1, len(rows))
    summary = {"router": "arrow", "bricks": [b.id for b in bricks],
               "adapters": len(net.peft_config["arrow_router"].arrow_config.task_adapter_names),
               "top_k": min(top_k, len(bricks)), "router_temperature": router_temperature,
               "exact_match": round(exact, 4)}
    return score_outputs(rows, outputs), summary
