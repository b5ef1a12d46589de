"""Shared-prefix prefill: which rows share what (pure), the layout with padding between prefix and rest, and
the same next-token logits and greedy texts as computing every row's whole prompt."""

import torch

from bricks.generation import encode_prompt, generate_texts
from bricks.prefix_share import PrefixStats, plan_prefixes, prefill_prefixes, shared_layout


def test_rows_share_what_they_have_in_common_within_one_key():
    encoded = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9], [7, 7, 7, 7, 7], [1, 2, 3, 4, 5, 8], [1, 2]]
    plan = plan_prefixes(encoded, ["a", "a", "a", "b", "a"], min_shared=3)
    assert plan.group[0] == plan.group[1] != plan.group[3]  # row 3 has another configuration
    assert plan.length[plan.group[0]] == 4  # what rows 0 and 1 share
    assert plan.length[plan.group[3]] == 5 and plan.length[plan.group[2]] == 4  # alone: all but the last token
    assert plan.length[plan.group[4]] == 1  # [1, 2] shares only 2 (< 3) with the group before it: alone
    assert plan.saved_tokens() == 4 and plan.width == 5
    assert not plan.worth_it(encoded)  # 4 of 24 prompt tokens: not a quarter

    same = [[1, 2, 3, 4, 5, 6, 7, 8, k] for k in range(10, 14)]
    shared = plan_prefixes(same)
    assert len(shared.rep) == 1 and shared.length == (8,) and shared.saved_tokens() == 24 and shared.worth_it(same)
    assert plan_prefixes([[1, 2, 3], [1, 2, 3]], min_shared=2).length == (2,)  # a row's last token is never in the prefix


def test_layout_puts_each_prefix_before_p_and_each_rest_at_the_end():
    encoded = [[1, 2, 3, 4, 5], [1, 2, 3, 6], [9, 8, 7]]
    plan = plan_prefixes(encoded, min_shared=2)
    ids, mask = shared_layout(encoded, plan, pad=0)
    p = plan.width
    assert p == 3 and ids.shape == (3, p + 2)
    assert ids[0].tolist() == [1, 2, 3, 4, 5] and ids[1].tolist() == [1, 2, 3, 0, 6]  # padding between the two parts
    assert mask[1].tolist() == [1, 1, 1, 0, 1]
    assert ids[2].tolist() == [0, 9, 8, 0, 7] and mask[2].tolist() == [0, 1, 1, 0, 1]


def _prompts():
    return [f"Reverse the text.\nIn: {w}\nOut: " for w in ("planet", "moon", "garden", "sky")] + ["Sort it.\nIn: ab\nOut: "]


def test_next_token_logits_match_the_whole_prompt(tiny):
    model, tok = tiny
    encoded = [encode_prompt(tok, p) for p in _prompts()]
    plan = plan_prefixes(encoded)
    assert plan.worth_it(encoded)
    width = max(map(len, encoded))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in encoded])
    mask = (torch.arange(width) >= torch.tensor([width - len(e) for e in encoded])[:, None]).long()
    with torch.no_grad():
        whole = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits[:, -1]
        cache = prefill_prefixes(model, encoded, plan, tok.pad_token_id, torch.device("cpu"))
        sids, smask = shared_layout(encoded, plan, tok.pad_token_id)
        p = plan.width
        positions = (smask.cumsum(-1) - 1).clamp(min=0)
        shared = model(input_ids=sids[:, p:], attention_mask=smask, position_ids=positions[:, p:],
                       past_key_values=cache).logits[:, -1]
    assert torch.allclose(whole, shared, atol=1e-5), (whole - shared).abs().max()


def test_generate_texts_gives_the_same_greedy_texts_and_counts_what_it_saved(tiny):
    model, tok = tiny
    prompts = _prompts() * 2
    plain = generate_texts(model, tok, prompts, max_new_tokens=6)
    stats = PrefixStats()
    shared = generate_texts(model, tok, prompts, max_new_tokens=6, share_prefixes=True, prefix_stats=stats)
    assert shared == plain
    assert stats.batches == 1 and stats.rows == len(prompts) and stats.saved_tokens >= stats.prompt_tokens // 2
    keyed = PrefixStats()
    assert generate_texts(model, tok, prompts, max_new_tokens=6, share_prefixes=True, prefix_stats=keyed,
                          row_keys=[str(i) for i in range(len(prompts))]) == plain
    assert keyed.batches == 0  # every row has its own configuration: nothing to share


def test_padding_puts_each_row_in_order_and_refuses_a_row_wider_than_the_width():
    import pytest

    from bricks.prompt_batches import _padded, left_padded

    ids, mask = left_padded([[1, 2, 3], [4], [], [5, 6]], pad=0)
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4], [0, 0, 0], [0, 5, 6]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0], [0, 1, 1]]
    ids, mask = _padded([[1, 2], [3]], 9, 4, left=False)
    assert ids.tolist() == [[1, 2, 9, 9], [3, 9, 9, 9]] and mask.tolist() == [[1, 1, 0, 0], [1, 0, 0, 0]]
    with pytest.raises(ValueError, match="a row of 3 tokens does not fit a width of 2"):
        left_padded([[1, 2, 3]], pad=0, width=2)
