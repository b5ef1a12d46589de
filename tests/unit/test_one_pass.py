"""One-pass mixed batches: stacked multi-LoRA (bricks.lora.multi) and per-row neuron masks (bricks.emergent.row_masks)
give each row what running it alone with its adapter or mask gives."""

import contextlib

import pytest
import torch

from bricks.emergent.masking import apply_masks
from bricks.emergent.row_masks import row_masks
from bricks.errors import BrickworkError, ConfigError
from bricks.lora.multi import MultiLora, UnsupportedMixedLoraError, mixed_lora_pass


def _tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def _peft(model, specs):
    """A PeftModel with one adapter per (name, rank, targets), random non-zero A and B."""
    from peft import LoraConfig, PeftModel, get_peft_model

    peft = None
    for name, r, targets in specs:
        cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(targets), init_lora_weights=False)
        if peft is None:
            peft = get_peft_model(model, cfg, adapter_name=name)
        else:
            assert isinstance(peft, PeftModel)
            peft.add_adapter(name, cfg)
    return peft.eval()


SPECS = [("a", 4, ("q_proj", "v_proj", "down_proj")), ("b", 8, ("q_proj", "o_proj", "gate_proj", "up_proj"))]
IDS = torch.tensor([[1, 5, 9, 3, 7], [2, 4, 6, 8, 10], [11, 3, 5, 2, 1], [9, 9, 4, 4, 1]])  # [4, 5]


def _alone(peft, name, row):
    with torch.no_grad():
        if name is None:
            with peft.disable_adapter():
                return peft(input_ids=IDS[row : row + 1]).logits[0]
        peft.set_adapter(name)
        return peft(input_ids=IDS[row : row + 1]).logits[0]


@pytest.mark.parametrize("mode", ["stacked", "gather"])
def test_each_row_gets_its_own_adapter(mode):
    peft = _peft(_tiny(), SPECS)
    rows = ["a", None, "b", "a"]
    with torch.no_grad(), peft.disable_adapter(), mixed_lora_pass(peft, rows, mode):
        mixed = peft(input_ids=IDS).logits  # [4, 5, V]
    for i, name in enumerate(rows):
        torch.testing.assert_close(mixed[i], _alone(peft, name, i), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(_alone(peft, "a", 0), _alone(peft, None, 0))  # the adapters do change the outputs


def test_stack_pads_ranks_and_the_forward_is_restored():
    peft = _peft(_tiny(), SPECS)
    multi = MultiLora.from_peft(peft, ["a", "b"])
    q = peft.base_model.model.model.layers[0].self_attn.q_proj
    stack = dict((id(layer), s) for layer, s in multi.layers)[id(q)]
    assert tuple(stack.a.shape) == (3, 8, 32) and tuple(stack.b.shape) == (3, 32, 8)  # slots 0 (base), a, b; r 8
    assert stack.a[0].abs().sum() == 0 and stack.a[1, 4:].abs().sum() == 0  # the zero slot and a's padding
    assert multi.nbytes > 0 and multi.slots([None, "b", "a"]) == [0, 2, 1]
    with multi.pass_for(["a"]):
        assert "forward" in q.__dict__
    assert "forward" not in q.__dict__


def test_unsupported_adapters_are_listed_in_one_error():
    from peft import LoraConfig

    peft = _peft(_tiny(), SPECS)
    peft.add_adapter("d", LoraConfig(r=4, target_modules=["q_proj"], use_dora=True))
    with pytest.raises(UnsupportedMixedLoraError) as e:
        MultiLora.from_peft(peft, ["a", "d", "nosuch"])
    msg = str(e.value)
    assert isinstance(e.value, BrickworkError) and "\n" not in msg
    assert "adapter d uses a LoRA variant" in msg and "adapter nosuch is not loaded" in msg
    with pytest.raises(UnsupportedMixedLoraError, match="adapter zz is not in this stack"):
        MultiLora.from_peft(peft, ["a"]).slots(["zz"])
    with pytest.raises(UnsupportedMixedLoraError, match="unknown one-pass LoRA mode 'fast'"):
        MultiLora.from_peft(peft, ["a"], mode="fast")


@pytest.mark.parametrize("mode", ["stacked", "gather"])
def test_a_batch_of_another_size_is_refused(mode):
    peft = _peft(_tiny(), SPECS)
    with torch.no_grad(), mixed_lora_pass(peft, ["a", "b"], mode), pytest.raises(UnsupportedMixedLoraError,
                                                                                 match="4 rows"):
        peft(input_ids=IDS)


def test_row_masks_equal_each_mask_alone():
    model = _tiny()
    g = torch.Generator().manual_seed(1)
    m1 = {0: torch.rand(48, generator=g) < 0.3, 1: torch.rand(48, generator=g) < 0.5}
    m2 = {1: torch.rand(48, generator=g) < 0.2}
    rows, modes = [m1, None, m2, m1], ["keep", "keep", "ablate", "ablate"]
    with torch.no_grad():
        with row_masks(model, rows, modes):
            mixed = model(input_ids=IDS).logits
        for i, (m, mode) in enumerate(zip(rows, modes)):
            if m is None:
                alone = model(input_ids=IDS[i : i + 1]).logits[0]
            else:
                with apply_masks(model, m, mode):
                    alone = model(input_ids=IDS[i : i + 1]).logits[0]
            torch.testing.assert_close(mixed[i], alone, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(mixed[0], model(input_ids=IDS[:1]).logits[0])  # the mask does change row 0


def test_row_masks_refuse_a_mask_that_does_not_fit():
    model = _tiny()
    with pytest.raises(ConfigError, match="row 1: mask for layer 5"):
        with row_masks(model, [None, {5: torch.ones(48, dtype=torch.bool)}], ["keep", "keep"]):
            pass


IDS6 = torch.tensor([[1, 5, 9, 3, 7], [2, 4, 6, 8, 10], [11, 3, 5, 2, 1], [9, 9, 4, 4, 1], [3, 1, 4, 1, 5],
                     [2, 7, 1, 8, 2]])  # [6, 5]


def test_compact_rows_with_adapters_and_masks_equal_each_row_alone():
    from bricks.emergent.compact_cache import CompactCache

    peft = _peft(_tiny(), SPECS)
    g = torch.Generator().manual_seed(2)
    m1 = {0: torch.rand(48, generator=g) < 0.3, 1: torch.rand(48, generator=g) < 0.5}
    m2 = {1: torch.rand(48, generator=g) < 0.2}  # layer 0: its rows run dense
    adapters = [None, "b", None, None, "a", None]
    masks, modes = [m1, m1, m2, m1, None, m2], ["keep", "keep", "ablate", "keep", "keep", "ablate"]
    cache = CompactCache()
    compact = [a is None for a in adapters]  # row 1 has m1 and an adapter: dense, masked
    with torch.no_grad(), peft.disable_adapter():
        with mixed_lora_pass(peft, adapters), row_masks(peft, masks, modes, compact=compact, cache=cache):
            mixed = peft(input_ids=IDS6).logits  # [6, 5, V]: prompts run compact
            step = peft(input_ids=IDS6[:, :1]).logits  # one token a row: every row dense, masked
        assert cache.stats.builds == 2  # m1's and m2's compact matrices
        with mixed_lora_pass(peft, adapters), row_masks(peft, masks, modes):
            masked = peft(input_ids=IDS6).logits
    for i in range(6):
        with torch.no_grad(), contextlib.ExitStack() as ctx:
            if adapters[i] is None:
                ctx.enter_context(peft.disable_adapter())
            else:
                peft.set_adapter(adapters[i])
            if masks[i] is not None:
                ctx.enter_context(apply_masks(peft, masks[i], modes[i]))
            alone = peft(input_ids=IDS6[i : i + 1]).logits[0]
            first = peft(input_ids=IDS6[i : i + 1, :1]).logits[0]
        torch.testing.assert_close(mixed[i], alone, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(step[i], first, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(mixed, masked, rtol=1e-4, atol=1e-5)
    assert "forward" not in peft.base_model.model.model.layers[0].mlp.__dict__  # put back


def test_a_lone_row_of_a_mask_runs_masked_and_flags_must_match_the_rows():
    model = _tiny()
    m1 = {0: torch.arange(48) % 3 == 0}
    rows, modes = [m1, None, None, None], ["keep"] * 4
    with torch.no_grad(), row_masks(model, rows, modes, compact=[True] * 4):
        assert "forward" not in model.model.layers[0].mlp.__dict__  # one row of m1: below min_rows
        model(input_ids=IDS)
    with pytest.raises(ConfigError, match="4 row masks but 3 compact flags"):
        with row_masks(model, rows, modes, compact=[True] * 3):
            pass


def test_a_row_subset_must_hold_every_row_with_an_adapter():
    from bricks.lora.multi import row_subset

    peft = _peft(_tiny(), SPECS)
    q = peft.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(4, 5, 32)
    with torch.no_grad(), peft.disable_adapter(), mixed_lora_pass(peft, ["a", None, None, "b"]):
        whole = q(x)
        with row_subset(torch.tensor([0, 2, 3])):
            part = q(x[[0, 2, 3]])
        with row_subset(torch.tensor([0, 1, 2])), pytest.raises(UnsupportedMixedLoraError, match="leaves out rows"):
            q(x[[0, 1, 2]])
        with pytest.raises(UnsupportedMixedLoraError, match="a batch of 3 rows"):
            q(x[[0, 2, 3]])  # no subset given
    torch.testing.assert_close(part, whole[[0, 2, 3]], rtol=1e-5, atol=1e-6)


def test_a_batch_of_one_mask_runs_all_its_rows_compact():
    model = _tiny()
    m1 = {0: torch.arange(48) % 3 == 0, 1: torch.arange(48) % 2 == 0}
    with torch.no_grad():
        with row_masks(model, [m1] * 4, ["keep"] * 4, compact=[True] * 4):
            compact = model(input_ids=IDS).logits
            step = model(input_ids=IDS[:, :1]).logits
        with apply_masks(model, m1, "keep"):
            torch.testing.assert_close(compact, model(input_ids=IDS).logits, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(step, model(input_ids=IDS[:, :1]).logits, rtol=1e-4, atol=1e-5)
