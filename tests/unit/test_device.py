"""Devices and dtypes (bricks.device), every branch on a CPU-only machine by faking what torch.cuda reports; and
inputs, masks and compact FFN matrices created on the model's device (the meta device stands in for a GPU)."""

import pytest
import torch

from bricks.device import model_device, resolve_device, resolve_dtype
from bricks.errors import ConfigError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_the_cpu_without_cuda_and_cuda_with_it(no_gpu, monkeypatch):
    assert resolve_device("auto") == "cpu"
    assert resolve_device(None) == "cpu"
    assert resolve_device() == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"


def test_cpu_and_visible_cuda_devices_are_accepted(two_gpus):
    assert resolve_device("cpu") == "cpu"
    assert resolve_device(" CPU ") == "cpu"
    assert resolve_device("cuda") == "cuda"
    assert resolve_device("cuda:0") == "cuda:0"
    assert resolve_device("CUDA:1") == "cuda:1"


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:3"])
def test_a_cuda_device_without_cuda_is_one_line_naming_it(no_gpu, spec):
    with pytest.raises(ConfigError) as e:
        resolve_device(spec)
    assert str(e.value) == f"device {spec!r} was asked for, but torch sees no CUDA device"


def test_a_cuda_index_beyond_the_device_count_is_refused(two_gpus):
    with pytest.raises(ConfigError, match=r"^device 'cuda:2' was asked for, but torch sees 2 CUDA device\(s\) "
                                          r"\(cuda:0\.\.cuda:1\)$"):
        resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["tpu", "gpu", "cuda:", "cuda:-1", "cuda:x", "mps", ""])
def test_an_unknown_device_is_refused_naming_it(two_gpus, spec):
    with pytest.raises(ConfigError) as e:
        resolve_device(spec)
    assert str(e.value) == f"unknown device {spec!r}; expected auto, cpu, cuda or cuda:N"
    assert "\n" not in str(e.value)


def test_auto_dtype_is_the_checkpoints_on_cpu_and_bfloat16_on_a_gpu(monkeypatch):
    assert resolve_dtype("auto", "cpu") == "auto"
    assert resolve_dtype(None, "cpu") == "auto"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("auto", "cuda") == "bfloat16"
    assert resolve_dtype("auto", "cuda:1") == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", "cuda") == "float16"  # an older GPU without bfloat16


def test_named_dtypes_and_their_aliases(monkeypatch):
    assert resolve_dtype("float32", "cpu") == "float32"
    assert resolve_dtype("torch.bfloat16", "cpu") == "bfloat16"
    assert resolve_dtype("bf16", "cpu") == "bfloat16"
    assert resolve_dtype("fp32", "cpu") == "float32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype("half", "cuda") == "float16"
    assert resolve_dtype("bfloat16", "cuda:0") == "bfloat16"


def test_a_dtype_the_device_cannot_run_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    with pytest.raises(ConfigError, match=r"^dtype 'bfloat16' cannot run on cuda: this GPU has no bfloat16"):
        resolve_dtype("bfloat16", "cuda")
    import bricks.device

    monkeypatch.setattr(bricks.device, "_runs_on_cpu", lambda dtype: dtype == "float32")
    with pytest.raises(ConfigError, match=r"^dtype 'float16' cannot run on the CPU"):
        resolve_dtype("float16", "cpu")
    assert resolve_dtype("float32", "cpu") == "float32"


@pytest.mark.parametrize("spec", ["int8", "float64x", "fp8"])
def test_an_unknown_dtype_is_refused(spec):
    with pytest.raises(ConfigError, match=rf"^unknown dtype '{spec}'; expected auto, float32, float16, bfloat16$"):
        resolve_dtype(spec, "cpu")


def test_load_model_refuses_a_missing_gpu_before_reading_the_folder(no_gpu, tmp_path):
    from bricks.model_io import load_model

    with pytest.raises(ConfigError, match="^device 'cuda' was asked for, but torch sees no CUDA device$"):
        load_model(tmp_path / "no-such-model", device="cuda")


# -- tensors on the model's device ----------------------------------------------------------------------------


def _meta_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    with torch.device("meta"):
        return LlamaForCausalLM(cfg).eval()


class _Stub:
    """A model on the meta device that records the devices of what it is given."""

    device = torch.device("meta")

    def __init__(self, vocab: int) -> None:
        from types import SimpleNamespace

        self.vocab = vocab
        self.config = SimpleNamespace(vocab_size=vocab, max_position_embeddings=64)
        self.seen: list[torch.device] = []

    def generate(self, input_ids, attention_mask, max_new_tokens=None, generation_config=None, **kwargs):
        self.seen += [input_ids.device, attention_mask.device]
        b, t = input_ids.shape
        return torch.zeros(b, t + (max_new_tokens or generation_config.max_new_tokens), dtype=torch.long)


def test_model_device_is_the_models_or_its_first_parameters():
    assert model_device(_meta_llama()) == torch.device("meta")
    assert model_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert model_device(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    assert model_device(object()) == torch.device("cpu")


def test_generate_texts_and_constrained_decoding_build_inputs_on_the_models_device():
    from bricks.constrained import generate_json
    from bricks.generation import generate_texts
    from bricks.toyworld.tokenizer import CHARACTERS, build_tokenizer

    tok = build_tokenizer()
    stub = _Stub(len(tok))
    assert len(generate_texts(stub, tok, ["ab", "abcd", "a"], max_new_tokens=2, batch_size=2)) == 3
    assert stub.seen and set(stub.seen) == {torch.device("meta")}
    json_tok = build_tokenizer(characters=CHARACTERS + '"')
    stub = _Stub(len(json_tok))
    assert generate_json(stub, json_tok, ["ab", "abc"], {"type": "string"}, max_new_tokens=3) == ["", ""]
    assert stub.seen and set(stub.seen) == {torch.device("meta")}


def test_training_batches_go_to_the_given_device():
    from bricks.training.sequences import collate

    ids, mask, labels = collate([([1, 2, 3], [-100, 2, 3]), ([4], [4])], 0, torch.device("meta"))
    assert {ids.device, mask.device, labels.device} == {torch.device("meta")}
    assert collate([([1], [1])], 0)[0].device == torch.device("cpu")


def test_masked_and_compact_ffn_run_on_the_models_device():
    from bricks.emergent.masking import apply_masks, compact_ffn

    model = _meta_llama()
    masks = {0: torch.arange(64) % 2 == 0, 1: torch.zeros(64, dtype=torch.bool)}  # on the CPU, as read from disk
    ids = torch.zeros(1, 4, dtype=torch.long, device="meta")
    with apply_masks(model, masks, "keep"):
        assert model(input_ids=ids).logits.device == torch.device("meta")
    with compact_ffn(model, {0: masks[0]}, "keep"):
        mlp = model.model.layers[0].mlp
        assert mlp.gate_proj.weight.shape == (32, 32) and mlp.down_proj.weight.shape == (32, 32)
        assert {p.device for p in mlp.parameters()} == {torch.device("meta")}
        assert model(input_ids=ids).logits.device == torch.device("meta")
    assert model.model.layers[0].mlp.gate_proj.weight.shape == (64, 32)  # put back
