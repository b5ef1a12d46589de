"""Pre-training resumes from its checkpoint exactly where an interrupted run stopped."""

import pytest
import torch

from bricks.toyworld.pretrain import PretrainConfig, pretrain
from bricks.toyworld.tokenizer import build_tokenizer

CFG = PretrainConfig(steps=6, batch_size=8, warmup=2, hidden_size=64, num_heads=1, intermediate_size=128,
                     num_layers=2, checkpoint_every=3)


class Stop(Exception):
    pass


def test_interrupted_run_resumes_to_identical_weights(tmp_path):
    tok = build_tokenizer()
    whole = pretrain(tmp_path / "a", tok, CFG)

    def interrupt(step, total, loss):
        if step == 4:
            raise Stop

    with pytest.raises(Stop):
        pretrain(tmp_path / "b", tok, CFG, on_step=interrupt)
    seen = []
    resumed = pretrain(tmp_path / "b", tok, CFG, on_step=lambda s, n, loss: seen.append(s))
    assert seen == [4, 5, 6]  # restarted after the step-3 checkpoint
    for (name, p), (_, q) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), name
    assert not (tmp_path / "b" / "checkpoint.tmp").exists()
