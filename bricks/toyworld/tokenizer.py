"""A character-level tokenizer for the toy world, built with `tokenizers` and wrapped for transformers."""

from __future__ import annotations

import string
from pathlib import Path

__all__ = ["SPECIAL_TOKENS", "CHARACTERS", "build_tokenizer"]

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
CHARACTERS = string.ascii_lowercase + string.ascii_uppercase + string.digits + " \n.,;:?!'-+=()"


def build_tokenizer(out_dir: Path | None = None, characters: str = CHARACTERS):  # -> PreTrainedTokenizerFast
    """One token per character; `<bos>` is prepended to every encoded text; unknown characters map to `<unk>`.

    Saved (when `out_dir` is given) as `tokenizer.json` + `tokenizer_config.json`, loadable by
    `AutoTokenizer.from_pretrained` and by vLLM.
    """
    from tokenizers import Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for ch in dict.fromkeys(characters):
        vocab[ch] = len(vocab)
    raw = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    raw.decoder = decoders.Fuse()
    raw.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=512, clean_up_tokenization_spaces=False,
    )
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok
