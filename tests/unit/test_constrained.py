"""Constrained decoding with xgrammar (`bricks.constrained`): every answer is JSON of the schema, a batch writes
what its prompts write one at a time, budgets and the context bound each row, and a tokenizer that cannot write
the JSON stops cleanly."""

import json

import pytest
import torch

from bricks.constrained import (
    accepted_prefix,
    decode_tokens,
    generate_grammar,
    generate_json,
    grammar_ebnf,
    json_ebnf,
    stop_token_ids,
    token_budgets,
)
from bricks.errors import BrickworkError, ConfigError
from bricks.json_grammar import JsonSchemaGrammar
from bricks.toyworld.tokenizer import CHARACTERS, build_tokenizer
from policies import ModelDecomposer, StepListGrammar
from policies.model_decompose import PLAN_PROMPT

OBJECT = {"type": "object", "properties": {"label": {"enum": ["yes", "no"]}, "n": {"type": "integer", "maximum": 99},
                                           "tags": {"type": "array", "items": {"type": "string", "maxLength": 5},
                                                    "maxItems": 2}},
          "required": ["label", "n", "tags"]}
TASKS = ["Reverse the text, then convert to uppercase.", "Count the letters.",
         "Sort the letters. Then drop all vowels from the word. Finally, count the characters.", "Reverse it."]


@pytest.fixture(scope="module")
def json_tiny():
    """(model, tokenizer): a random 2-layer Llama (weights large enough that greedy picks have no near-ties) over
    the toy world's characters plus JSON's brackets and quotes."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(characters=CHARACTERS + '[]{}"')
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.5,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def _step_list(text: str, grammar: StepListGrammar) -> list[str]:
    steps = json.loads(text)
    assert isinstance(steps, list) and 1 <= len(steps) <= grammar.max_steps, text
    assert all(isinstance(s, str) and 1 <= len(s) <= grammar.max_chars for s in steps), text
    return steps


def _blank_run(text: str) -> int:
    """The longest run of whitespace outside strings in a JSON text."""
    longest = run = 0
    inside = escaped = False
    for ch in text:
        if inside:
            inside, escaped = (escaped or ch != '"'), (not escaped and ch == "\\")
            continue
        inside = ch == '"'
        run = run + 1 if ch in " \t\n\r" else 0
        longest = max(longest, run)
    return longest


def test_every_answer_is_json_of_the_schema_and_a_batch_equals_one_at_a_time(json_tiny):
    model, tok = json_tiny
    grammar = StepListGrammar(max_steps=3, max_chars=20)
    prompts = [PLAN_PROMPT.format(instruction=t) for t in TASKS]
    batch = generate_grammar(model, tok, prompts, grammar_ebnf(grammar), max_new_tokens=80, batch_size=3)
    alone = [generate_grammar(model, tok, [p], grammar_ebnf(grammar), max_new_tokens=80)[0] for p in prompts]
    assert batch == alone
    assert len({tuple(_step_list(text, grammar)) for text in batch}) > 1  # the prompts matter
    assert max(_blank_run(text) for text in batch) <= grammar.max_blank
    objects = generate_json(model, tok, [f"Is {w} sorted? " for w in ("abc", "zzz")], OBJECT, max_new_tokens=80)
    for text in objects:
        value = json.loads(text)
        assert set(value) == {"label", "n", "tags"} and value["label"] in ("yes", "no"), text
        assert isinstance(value["n"], int) and value["n"] <= 99 and len(value["tags"]) <= 2, text
        assert all(isinstance(t, str) and len(t) <= 5 for t in value["tags"]), text


def test_budgets_cut_rows_and_a_prompt_without_room_gets_nothing(json_tiny):
    model, tok = json_tiny
    ebnf = grammar_ebnf(StepListGrammar(max_steps=2, max_chars=50))
    short = generate_grammar(model, tok, ["Steps: "], ebnf, max_new_tokens=5)[0]
    assert len(tok(short, add_special_tokens=False).input_ids) == 5 and short.startswith("[")
    long_prompt = "x" * 507  # 508 tokens with <bos>: 4 left of a context of 512
    texts = generate_grammar(model, tok, [long_prompt, "x" * 600, "Steps: "], ebnf, max_new_tokens=8)
    assert len(tok(texts[0], add_special_tokens=False).input_ids) == 4
    assert texts[1] == "" and texts[2] == generate_grammar(model, tok, ["Steps: "], ebnf, max_new_tokens=8)[0]
    assert token_budgets([10, 500, 520], 8, 512) == [8, 8, 0] and token_budgets([3], 8, None) == [8]
    with pytest.raises(ConfigError, match="max_new_tokens must be at least 1, got 0"):
        token_budgets([3], 0, None)


def test_a_tokenizer_that_cannot_write_the_json_stops_at_once(tiny):
    model, tok = tiny  # the toy world's characters: no bracket, no quote
    assert generate_json(model, tok, ["ab", "abcd"], {"type": "array"}, max_new_tokens=4) == ["", ""]


def test_accepted_prefix_stops_at_the_first_rejected_or_stop_token():
    tok = build_tokenizer(characters=CHARACTERS + '[]"')
    ids = tok('["ab"]x', add_special_tokens=False).input_ids
    ebnf = json_ebnf({"type": "array", "items": {"type": "string"}})
    assert tok.decode(accepted_prefix(tok, len(tok), ebnf, ids)) == '["ab"]'
    assert tok.decode(accepted_prefix(tok, len(tok), ebnf, ids[:3] + [tok.eos_token_id] + ids[3:])) == '["a'
    assert accepted_prefix(tok, len(tok), ebnf, tok("x", add_special_tokens=False).input_ids) == []
    assert stop_token_ids(tok) == [tok.eos_token_id]


def test_grammars_give_their_json_schema_and_stay_immutable():
    g = StepListGrammar(max_steps=3, max_chars=40)
    assert g.json_schema == {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 40},
                             "minItems": 1, "maxItems": 3}
    g.json_schema["maxItems"] = 99
    assert g.json_schema["maxItems"] == 3
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    j = JsonSchemaGrammar(schema)
    schema["properties"]["b"] = {"type": "string"}  # the caller's dict changes later: the grammar does not
    assert j.json_schema == {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert j.is_complete('{"a": 1}') and not j.is_prefix('{"b"')
    assert grammar_ebnf(g) == json_ebnf(g.json_schema, max_whitespace=2)
    assert "root ::=" in grammar_ebnf(j)


def test_bad_schemas_and_grammars_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="a JSON schema must be JSON itself"):
        json_ebnf({"type": "object", "default": object()})
    with pytest.raises(ConfigError, match=r"JSON schema '\{\"type\": \"nonsense\"\}' cannot be made a grammar"):
        json_ebnf({"type": "nonsense"})
    with pytest.raises(ConfigError, match="grammar object has no json_schema"):
        grammar_ebnf(object())
    with pytest.raises(ConfigError, match="max_whitespace must be at least 1 or None, got 0"):
        json_ebnf({"type": "array"}, max_whitespace=0)
    with pytest.raises(BrickworkError, match="a JSON schema must be JSON itself"):
        JsonSchemaGrammar({"type": "object", "default": {1, 2}})


def test_model_decomposer_splits_many_instructions_in_one_batched_call():
    calls = []

    def lm_many(prompts, grammar):
        calls.append(len(prompts))
        return ['["Sort the letters.", "Reverse the text."]', "", '["Count the letters."]']

    d = ModelDecomposer(lm=lambda prompt, grammar: pytest.fail("split_many must not call lm"), lm_many=lm_many)
    tasks = ["Sort the letters and after that reverse the text.", "Sort the letters, then count the letters.",
             "Count the letters."]
    assert d.split_many(tasks) == [["Sort the letters.", "Reverse the text."], ["Sort the letters.",
                                                                               "Count the letters."],
                                   ["Count the letters."]]
    assert calls == [3] and d.stats == {"model": 2, "fallback": 1}


def test_answers_are_the_text_the_grammar_read_even_when_the_tokenizer_decodes_otherwise():
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate('[]", ab')}}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))  # no decoder: decode() puts spaces between tokens
    raw.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", eos_token="<eos>")
    ids = tok('["ab", "b"]', add_special_tokens=False).input_ids
    assert tok.decode(ids) != '["ab", "b"]'
    assert decode_tokens(tok, len(tok), ids) == '["ab", "b"]'
