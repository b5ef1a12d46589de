"""Which device and dtype a model runs on: "auto", "cpu", "cuda" or "cuda:N", checked before anything loads.

`resolve_device` turns a spec into a concrete device string ("auto": "cuda" when torch sees a CUDA device,
"cpu" otherwise) and refuses, in one line naming the value, a CUDA device that is not there or a spec it does
not know. `resolve_dtype` picks the dtype for that device ("auto": the checkpoint's own on the CPU, bfloat16 on
a GPU that runs it, float16 on one that does not) and refuses a dtype the device cannot run. `model_device`
is where a loaded model expects its inputs (tensors fed to it are created there).
"""

from __future__ import annotations

import re

from bricks.errors import ConfigError

__all__ = ["DEVICES", "DTYPES", "resolve_device", "resolve_dtype", "model_device"]

DEVICES = "auto, cpu, cuda or cuda:N"
DTYPES = ("float32", "float16", "bfloat16")
_ALIASES = {"fp32": "float32", "float": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
_CUDA = re.compile(r"cuda(?::(\d+))?")


def resolve_device(spec: str | None = "auto") -> str:
    """A concrete device string ("cpu", "cuda", "cuda:N") for `spec` (None means "auto"); ConfigError otherwise."""
    import torch

    text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cpu":
        return "cpu"
    match = _CUDA.fullmatch(text)
    if match is None:
        raise ConfigError(f"unknown device {spec!r}; expected {DEVICES}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} was asked for, but torch sees no CUDA device")
    if match.group(1) is not None:
        index, count = int(match.group(1)), torch.cuda.device_count()
        if index >= count:
            raise ConfigError(f"device {spec!r} was asked for, but torch sees {count} CUDA device(s) "
                              f"(cuda:0..cuda:{count - 1})")
    return text


def _bf16_on_gpu(device: str) -> bool:
    import torch

    try:
        return bool(torch.cuda.is_bf16_supported())
    except (RuntimeError, AssertionError):  # pragma: no cover (a driver that cannot answer)
        return False


def _runs_on_cpu(dtype: str) -> bool:
    """Whether the CPU build of torch multiplies matrices in `dtype` (what every layer of a model does)."""
    import torch

    try:
        t = torch.ones(2, 2, dtype=getattr(torch, dtype))
        (t @ t).sum().item()
    except (RuntimeError, TypeError):
        return False
    return True


def resolve_dtype(spec: str | None, device: str) -> str:
    """The dtype name to load a model in on `device` (a resolved device): "auto" keeps the checkpoint's dtype on
    the CPU and is bfloat16 on a GPU (float16 where the GPU has no bfloat16); a named dtype the device cannot
    run, or an unknown name, is a one-line ConfigError."""
    text = "auto" if spec is None else str(spec).strip().lower().removeprefix("torch.")
    text = _ALIASES.get(text, text)
    gpu = str(device).startswith("cuda")
    if text == "auto":
        if not gpu:
            return "auto"
        return "bfloat16" if _bf16_on_gpu(device) else "float16"
    if text not in DTYPES:
        raise ConfigError(f"unknown dtype {spec!r}; expected auto, {', '.join(DTYPES)}")
    if gpu and text == "bfloat16" and not _bf16_on_gpu(device):
        raise ConfigError(f"dtype {spec!r} cannot run on {device}: this GPU has no bfloat16; use float16 or float32")
    if not gpu and not _runs_on_cpu(text):
        raise ConfigError(f"dtype {spec!r} cannot run on the CPU with this torch build; use float32 or auto")
    return text


def model_device(model):
    """The torch.device a model's inputs go to: `model.device`, else its first parameter's, else the CPU."""
    import torch

    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    if isinstance(device, str):
        return torch.device(device)
    params = getattr(model, "parameters", None)
    if callable(params):
        try:
            return next(iter(params())).device
        except (StopIteration, TypeError):
            pass
    return torch.device("cpu")
