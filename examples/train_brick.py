"""Train a LoRA brick on instruction rows for any HF causal LM and add it to a library (here: the toy world).

    python examples/train_brick.py /tmp/my-library

Training runs on Hugging Face `Trainer` on the model's device (a GPU when torch sees one, in bf16 where it can);
the LoRA targets are the model family's (Llama: q/k/v/o_proj and gate/up/down_proj), and it stops early once the
held-out exact match reaches the target.
"""

import shutil
import sys
from pathlib import Path

from bricks import Library
from bricks.model_io import load_model, load_tokenizer
from bricks.rows import read_rows
from bricks.toyworld.dataset import split_path
from bricks.toyworld.paths import world_data_dir, world_library_dir, world_model_dir
from bricks.training.export import write_lora_brick
from bricks.training.lora import LoraTrainConfig, train_lora

out = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/brickwork-library")
shutil.copytree(world_library_dir(), out, dirs_exist_ok=False)
library = Library.open(out)
library.remove("double")

rows = [r for r in read_rows(split_path(world_data_dir(), "single", "train")) if r.skills == ("double",)]
base = load_model(world_model_dir())
result = train_lora(base, load_tokenizer(world_model_dir()), rows, LoraTrainConfig(max_steps=600))
print(f"held-out exact match {result.holdout_accuracy:.3f} after {result.steps} steps")
folder = write_lora_brick(result.model, out.parent / f".{out.name}-double", brick_id="double",
                          description="Doubles a word: writes each of its letters twice.",
                          examples=["Double every letter.", "Write each character twice."],
                          base_model=library.base_model, metrics={"exact_match_holdout": result.holdout_accuracy})
print("added", library.add(folder).key)
shutil.rmtree(folder)
