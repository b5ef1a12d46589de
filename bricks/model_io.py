"""Loading a base model and its tokenizer from a local Hugging Face folder (the edge where files are read)."""

from __future__ import annotations

import json
from pathlib import Path

from bricks.errors import BrickworkError

__all__ = ["ModelLoadError", "check_model_dir", "load_model", "load_tokenizer"]


class ModelLoadError(BrickworkError):
    """A model folder is missing, incomplete, corrupt or holds pickle weights."""


def check_model_dir(model_dir: Path) -> Path:
    """Validate a HF model folder (config.json + safetensors weights) and return its resolved path."""
    path = Path(model_dir).expanduser()
    if not path.is_dir():
        raise ModelLoadError(f"model folder {str(path)!r} does not exist")
    config = path / "config.json"
    if not config.is_file():
        raise ModelLoadError(f"model folder {str(path)!r} has no config.json")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{config}: corrupt config.json ({e})") from None
    if not any(path.glob("*.safetensors")):
        pickles = sorted(p.name for p in path.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".pkl"})
        hint = f"; found pickle weights {pickles}, which brickwork refuses to load" if pickles else ""
        raise ModelLoadError(f"model folder {str(path)!r} has no *.safetensors weights{hint}")
    return path.resolve()


def load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    path = check_model_dir(model_dir)
    tok = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(model_dir: Path, *, dtype: str = "auto", trust_remote_code: bool = False, device: str | None = "auto",
               device_map: str | dict | None = None):
    """Load a causal LM from safetensors only, in eval mode, on `device` ("auto", "cpu", "cuda", "cuda:N"; see
    `bricks.device`). `device_map` (e.g. "auto": spread over every GPU, for a model too large for one) is passed
    to transformers instead of moving the model to `device`; inputs then go to its first parameter's device."""
    import torch
    from transformers import AutoModelForCausalLM

    from bricks.device import resolve_device, resolve_dtype

    where = resolve_device(device)  # a missing GPU or an unknown device fails here, before any file is read
    dtype = resolve_dtype(dtype, where)
    path = check_model_dir(model_dir)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    placement = {"device_map": device_map} if device_map is not None else {}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path), dtype=torch_dtype, use_safetensors=True, trust_remote_code=trust_remote_code, **placement
        )
        if device_map is None and where != "cpu":
            model = model.to(where)
    except (OSError, ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load model from {str(path)!r}: {first}") from None
    model.eval()
    return model
