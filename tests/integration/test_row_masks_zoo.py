"""One-pass batches with per-row neuron masks on every dense family of the zoo: the rows of a mask that run its
compact FFN matrices (`row_masks(compact=...)`) get the logits that masking the whole FFN gives, gated, fused
(Phi-3's gate_up), ungated (GPT-NeoX) and GPT-2's Conv1D layouts alike."""

import pytest
import torch
from zoo_models import ZOO, save_zoo_model

from bricks.emergent.compact_cache import CompactCache
from bricks.emergent.row_masks import row_masks

IDS = torch.tensor([[5, 9, 3, 7, 11, 4], [4, 6, 8, 10, 12, 3], [3, 5, 7, 9, 13, 6], [9, 4, 4, 5, 8, 7]])  # [4, 6]


@pytest.mark.parametrize("family", [f for f in ZOO if f != "mixtral"])
def test_compact_rows_give_the_masked_logits_on_every_family(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(save_zoo_model(family, tmp_path / family)).eval()
    g = torch.Generator().manual_seed(3)
    mask = {layer: torch.rand(128, generator=g) < 0.4 for layer in range(2)}
    rows, modes = [mask, None, mask, mask], ["keep", "keep", "keep", "keep"]
    cache = CompactCache()
    with torch.no_grad():
        with row_masks(model, rows, modes):
            masked = model(input_ids=IDS).logits
        with row_masks(model, rows, modes, compact=[True] * 4, cache=cache):
            compact = model(input_ids=IDS).logits
        plain = model(input_ids=IDS).logits
    assert cache.stats.builds == 1, family
    torch.testing.assert_close(compact, masked, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(masked[0], plain[0])  # the mask does change its rows
    torch.testing.assert_close(compact[1], plain[1], rtol=1e-4, atol=1e-5)  # the row without one runs whole
