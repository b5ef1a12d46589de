"""LoRA training on Hugging Face `Trainer`: the steps, batches, schedule and early stop brickwork has always used.

`train_lora` (bricks/training/lora.py) builds the PEFT model; this module runs it through `transformers.Trainer`:

- batches: every optimizer step draws `batch_size` encoded rows with a seeded RNG (`lora:{seed}:{step}`), read in
  order (split into micro-batches of `batch_size / gradient_accumulation_steps`); loss only on answer tokens;
- optimizer: AdamW (betas 0.9, 0.98), gradients clipped to norm 1; schedule: `warmup_cosine` (linear warm-up, cosine
  decay to 10 % of the peak) as a LambdaLR;
- a `TrainerCallback` measures held-out exact match every `eval_every` steps and stops once it reaches
  `target_accuracy`; it also reports every step's loss to the caller's progress callback;
- the model's own device (`trainer_settings` pins it: no DataParallel, no move); bf16 autocast on a CUDA device
  that supports it; no checkpoints unless a checkpoint dir is given (then adapter safetensors only); no
  report_to integrations, no printed logs.

It imports torch and transformers at once: `train_lora` imports it only when it trains.
"""

from __future__ import annotations

import contextlib
import logging
import random
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback

from bricks.errors import ConfigError
from bricks.training.sequences import collate, warmup_cosine

__all__ = ["StepBatches", "TrainerOutcome", "PinnedTrainingArguments", "HoldoutCallback", "LoraTrainer", "use_bf16",
           "trainer_settings", "run_trainer"]

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int, float], None]
Evaluate = Callable[[], float]
Example = tuple[list[int], list[int]]


class StepBatches:
    """A map-style dataset of `steps * batch_size` items: item i is encoded row number k of optimizer step
    i // batch_size, where step s draws its rows with `random.Random(f"lora:{seed}:{s}")` (with replacement)."""

    def __init__(self, examples: Sequence[Example], steps: int, batch_size: int, seed: int):
        if not examples:
            raise ConfigError("no encoded training rows to draw batches from")
        self.examples, self.steps, self.batch_size, self.seed = examples, steps, batch_size, seed
        self._step, self._rows = -1, []

    def __len__(self) -> int:
        return self.steps * self.batch_size

    def rows_of_step(self, step: int) -> list[int]:
        """The indices into `examples` that optimizer step `step` (0-based) trains on."""
        rng = random.Random(f"lora:{self.seed}:{step}")
        return [rng.randrange(len(self.examples)) for _ in range(self.batch_size)]

    def __getitem__(self, index: int) -> Example:
        if not 0 <= index < len(self):
            raise IndexError(index)
        step, k = divmod(index, self.batch_size)
        if step != self._step:
            self._step, self._rows = step, self.rows_of_step(step)
        return self.examples[self._rows[k]]


def use_bf16(device: str, requested: bool | None, bf16_supported: bool) -> bool:
    """Whether to train under bf16 autocast on `device`: `requested` None means yes on a CUDA device that supports
    bf16, no elsewhere; True on a GPU without bf16 is a one-line ConfigError."""
    cuda = str(device).startswith("cuda")
    if requested is None:
        return cuda and bf16_supported
    if requested and cuda and not bf16_supported:
        raise ConfigError(f"bf16 training was asked for on {device!r}, but this GPU has no bfloat16")
    return bool(requested)


def trainer_settings(cfg, device: str, *, bf16_supported: bool, output_dir: str) -> dict:
    """The `TrainingArguments` for `cfg` (a LoraTrainConfig) on the model's `device` (a pure function: no GPU
    needed to see what a GPU run would get). Checkpoints only with `cfg.checkpoint_dir` (adapter safetensors,
    no optimizer state); otherwise `output_dir` (a temp dir) stays empty."""
    checkpoints = cfg.checkpoint_dir is not None
    on_cpu = not str(device).startswith("cuda")
    return dict(
        output_dir=str(cfg.checkpoint_dir) if checkpoints else output_dir,
        pinned_device=str(device),
        use_cpu=on_cpu,
        bf16=use_bf16(device, cfg.bf16, bf16_supported),
        fp16=False,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size // cfg.gradient_accumulation_steps,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.98,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        max_grad_norm=1.0,
        warmup_steps=cfg.warmup,
        seed=cfg.seed,
        data_seed=cfg.seed,
        train_sampling_strategy="sequential",  # StepBatches holds the seeded order
        dataloader_num_workers=0,
        dataloader_pin_memory=not on_cpu,
        remove_unused_columns=False,
        label_names=["labels"],
        logging_strategy="steps",
        logging_steps=1,  # every step's loss reaches the progress callback
        disable_tqdm=True,
        report_to="none",
        eval_strategy="no",
        save_strategy="steps" if checkpoints else "no",
        save_steps=(cfg.save_every or cfg.eval_every) if checkpoints else 500,
        save_only_model=True,
    )


@dataclass(frozen=True)
class TrainerOutcome:
    """Steps run and the held-out exact match measured at each evaluation (step, accuracy)."""

    steps: int
    history: tuple[tuple[int, float], ...] = field(default=())


@dataclass
class PinnedTrainingArguments(TrainingArguments):
    """`TrainingArguments` pinned to one device, the model's: Trainer then neither moves the model nor wraps it in
    DataParallel on a machine with several GPUs, and `cuda:N` trains on GPU N."""

    pinned_device: str = "cpu"

    @cached_property
    def _setup_devices(self):
        TrainingArguments._setup_devices.func(self)  # accelerate's state, as Trainer expects it
        device = torch.device(self.pinned_device)
        self._n_gpu = 1 if device.type == "cuda" else 0
        if device.type == "cuda":
            torch.cuda.set_device(device)  # accelerate's "cuda" is the current device
        return device


class HoldoutCallback(TrainerCallback):
    """Held-out exact match every `cfg.eval_every` steps, appended to `history` (training stops once it reaches
    `cfg.target_accuracy`), and each step's loss passed to `on_step(step, max_steps, loss)`."""

    def __init__(self, cfg, history: list, evaluate: Evaluate | None = None, on_step: StepCallback | None = None):
        self.cfg, self.history, self.evaluate, self.on_step = cfg, history, evaluate, on_step

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        if self.evaluate is not None and step % self.cfg.eval_every == 0:
            accuracy = self.evaluate()
            self.history.append((step, accuracy))
            log.info("lora step %d held-out exact match %.3f", step, accuracy)
            if accuracy >= self.cfg.target_accuracy:
                control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.on_step is not None and logs and "loss" in logs:
            self.on_step(state.global_step, self.cfg.max_steps, float(logs["loss"]))
        return control


class LoraTrainer(Trainer):
    """Trainer with brickwork's schedule: `warmup_cosine` (a LambdaLR on the peak learning rate)."""

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            total, warmup = self.args.max_steps, self.args.warmup_steps
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer or self.optimizer, lambda step: warmup_cosine(step, total, warmup, 1.0))
        return self.lr_scheduler


def _bf16_supported(device: str) -> bool:
    if not str(device).startswith("cuda"):
        return False
    try:
        return bool(torch.cuda.is_bf16_supported())
    except (RuntimeError, AssertionError):  # pragma: no cover (a driver that cannot answer)
        return False


def run_trainer(model, examples: Sequence[Example], pad_id: int, cfg, *, device: str,
                evaluate: Evaluate | None = None, on_step: StepCallback | None = None) -> TrainerOutcome:
    """Train the trainable parameters of `model` (a PEFT model on `device`) on `examples` ((ids, labels) pairs)
    for at most `cfg.max_steps` steps; `evaluate` (None: no held-out part) gives the held-out exact match."""
    history: list[tuple[int, float]] = []
    data = StepBatches(examples, cfg.max_steps, cfg.batch_size, cfg.seed)

    def collator(batch):
        ids, mask, labels = collate(batch, pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    on_gpu = str(device).startswith("cuda")
    with tempfile.TemporaryDirectory(prefix="brickwork-lora-") as tmp, \
            (torch.cuda.device(torch.device(device)) if on_gpu else contextlib.nullcontext()):
        settings = trainer_settings(cfg, device, bf16_supported=_bf16_supported(device), output_dir=tmp)
        trainer = LoraTrainer(model=model, args=PinnedTrainingArguments(**settings), train_dataset=data,
                              data_collator=collator, callbacks=[HoldoutCallback(cfg, history, evaluate, on_step)])
        for default in (PrinterCallback, ProgressCallback):
            trainer.remove_callback(default)
        try:
            trainer.train()
            steps = trainer.state.global_step
        finally:
            trainer.accelerator.unwrap_model(trainer.model, keep_fp32_wrapper=False)  # autocast wrapper off
    return TrainerOutcome(steps, tuple(history))
