"""Rebuild the whole toy world from seeds: splits, tokenizer, base model, four LoRA bricks, five emergent
(keep-only ffn_mask) bricks of the base skills, a library.

Everything is written under a staging folder and renamed into place at the end, so an interrupted or
failed build leaves the previous world untouched. Pre-training checkpoints live in a work folder beside
the output, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from bricks.evaluation import exact_match_by_skill
from bricks.fingerprint import model_fingerprint
from bricks.library import Library
from bricks.manifest import BaseModelRef
from bricks.model_io import load_model, load_tokenizer
from bricks.rows import InstructionRow, read_rows
from bricks.toyworld.aliases import apply_aliases
from bricks.toyworld.dataset import DatasetSizes, split_path, write_splits
from bricks.toyworld.pretrain import PretrainConfig, pretrain
from bricks.toyworld.skills import EMERGENT_SKILLS, LORA_SKILLS, SKILLS
from bricks.toyworld.tasks import sample_chain_steps
from bricks.toyworld.tokenizer import build_tokenizer
from bricks.training.export import write_lora_brick
from bricks.training.lora import LoraTrainConfig, train_lora

__all__ = ["BuildConfig", "EmergentConfig", "build_world", "brick_training_rows", "train_world_brick",
           "add_emergent_bricks", "TOY_MODEL_NAME"]

log = logging.getLogger(__name__)

TOY_MODEL_NAME = "brickwork/toy-llama"
Progress = Callable[[str, int, int, float | None], None]


@dataclass(frozen=True)
class EmergentConfig:
    """How the base skills' emergent bricks are found: the same as `brickwork bricks discover --data
    single_train.jsonl --holdout single_validation.jsonl --skills reverse,uppercase,sort,count,add` with these
    options (its defaults): keep-only masks of the `budget` share of all FFN neurons ranked by gold-answer
    attribution, added when they keep >= `min_retention` of the base model's right validation answers."""

    budget: float = 0.3
    criterion: str = "attribution"
    scope: str = "global"
    min_retention: float = 0.95
    min_support: int = 20
    prefix: str = "emergent-"


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines a toy world; the same config and seed give the same world."""

    seed: int = 0
    sizes: DatasetSizes = field(default_factory=DatasetSizes)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    lora: LoraTrainConfig = field(default_factory=LoraTrainConfig)
    chain_fraction: float = 0.5  # extra brick-training rows drawn from chain intermediates, per fresh row
    emergent: EmergentConfig = field(default_factory=EmergentConfig)

    @classmethod
    def quick(cls, seed: int = 0) -> "BuildConfig":
        """A CI-sized run of the same pipeline (seconds): tiny data, a few dozen steps."""
        return cls(seed, DatasetSizes.quick(), PretrainConfig(steps=30, batch_size=16, warmup=5, seed=seed,
                                                              checkpoint_every=15, hidden_size=64, num_heads=1,
                                                              num_layers=2, intermediate_size=128),
                   LoraTrainConfig(max_steps=10, batch_size=16, warmup=2, eval_every=5, seed=seed))


def _evaluate(model, tokenizer, rows) -> dict[str, float]:
    return {k: round(v.accuracy, 4) for k, v in exact_match_by_skill(model, tokenizer, rows).items()}


def _rows_of(rows, skills) -> list[dict]:
    return [r for r in rows if len(r["skills"]) == 1 and r["skills"][0] in skills]


def _noop(stage: str, done: int, total: int, loss: float | None) -> None:
    pass


def build_world(out: Path, cfg: BuildConfig = BuildConfig(), *, progress: Progress = _noop,
                work_dir: Path | None = None) -> dict:
    """Build the toy world into `out` and return its report (also written to `out/report.json`)."""
    import torch

    out = Path(out)
    work = Path(work_dir) if work_dir else out.with_name(out.name + ".work")
    stage = work / "stage"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    written = write_splits(stage / "data", seed=cfg.seed, sizes=cfg.sizes)
    timings["data_s"] = time.perf_counter() - t0

    t = time.perf_counter()
    model_dir = stage / "model"
    tokenizer = build_tokenizer(model_dir)
    pcfg = replace(cfg.pretrain, seed=cfg.seed)
    model = pretrain(work / "pretrain", tokenizer, pcfg, on_step=lambda s, n, loss: progress("pretrain", s, n, loss))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(str(model_dir), safe_serialization=True)
    timings["pretrain_s"] = time.perf_counter() - t

    test_rows = [r.as_dict() for r in read_rows(split_path(stage / "data", "single", "test"))]
    base_scores = _evaluate(model, tokenizer, test_rows)
    progress("evaluate base", 1, 1, None)
    base_ref = BaseModelRef(name=TOY_MODEL_NAME, fingerprint=model_fingerprint(model_dir))
    base_examples = [p for s in EMERGENT_SKILLS for p in SKILLS[s].phrasings]
    library = Library.create(stage / "library", base_model=base_ref, base_examples=base_examples,
                             canonical_instructions=True, input_required=True)

    train_rows = read_rows(split_path(stage / "data", "single", "train"))
    bricks_report = {}
    t = time.perf_counter()
    for skill_id in LORA_SKILLS:
        brick_dir = work / "bricks" / skill_id
        bricks_report[skill_id] = train_world_brick(
            model_dir, tokenizer, skill_id, brick_training_rows(train_rows, skill_id, cfg), test_rows, base_scores,
            base_ref, cfg, brick_dir, progress=progress)
        library.add(brick_dir)
        shutil.rmtree(brick_dir)
        progress("evaluate bricks", len(bricks_report), len(LORA_SKILLS), None)
    timings["lora_s"] = time.perf_counter() - t
    t = time.perf_counter()
    emergent_report = add_emergent_bricks(model_dir, library, stage / "data", cfg.emergent, progress=progress)
    timings["emergent_s"] = time.perf_counter() - t
    apply_aliases(library)  # routing documents: how users word each skill (indexed, never trained on)
    timings["total_s"] = time.perf_counter() - t0

    report = {
        "seed": cfg.seed, "config": asdict(cfg), "rows": written,
        "base_model": {"name": base_ref.name, "fingerprint": base_ref.fingerprint,
                       "parameters": sum(p.numel() for p in model.parameters())},
        "base_exact_match_test": base_scores, "bricks": bricks_report,
        "emergent_bricks": emergent_report,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
    }
    (stage / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    _swap_into_place(stage, out)
    report["size_bytes"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    return report


def brick_training_rows(train_rows: Sequence[InstructionRow], skill_id: str, cfg: BuildConfig) -> list[InstructionRow]:
    """A LoRA skill's training rows: its fresh single-skill rows plus rows drawn from chain intermediates.

    The chain rows give the brick the inputs earlier plan steps hand it (doubled words, one or two letters).
    """
    rows = [r for r in train_rows if r.skills == (skill_id,)]
    rng = random.Random(f"{cfg.seed}:chain:{skill_id}")
    extra = sample_chain_steps(rng, skill_id, int(len(rows) * cfg.chain_fraction))
    return rows + [InstructionRow(r.id, r.instruction, r.input, r.output, r.skills) for r in extra]


def train_world_brick(model_dir: Path, tokenizer, skill_id: str, rows: Sequence[InstructionRow], test_rows: list[dict],
                      base_scores: dict[str, float], base_ref: BaseModelRef, cfg: BuildConfig, brick_dir: Path, *,
                      version: int = 1, progress: Progress = _noop, init_from: Path | None = None) -> dict:
    """Train one LoRA skill brick of the toy world into `brick_dir`; return its report entry."""
    t = time.perf_counter()
    base = load_model(model_dir)
    result = train_lora(base, tokenizer, rows, replace(cfg.lora, seed=cfg.seed),
                        on_step=lambda s, n, loss: progress(f"lora {skill_id}", s, n, loss),
                        init_from=str(init_from) if init_from else None)
    own = _evaluate(result.model, tokenizer, _rows_of(test_rows, {skill_id}))[skill_id]
    others = _evaluate(result.model, tokenizer, _rows_of(test_rows, EMERGENT_SKILLS))
    skill = SKILLS[skill_id]
    metrics = {"exact_match_test": own, "exact_match_holdout": round(result.holdout_accuracy, 4),
               "train_steps": float(result.steps), "train_rows": float(len(rows)),
               **{f"interference_{k}": round(v - base_scores[k], 4) for k, v in others.items()}}
    if brick_dir.exists():
        shutil.rmtree(brick_dir)
    write_lora_brick(result.model, brick_dir, brick_id=skill_id, description=skill.description,
                     examples=skill.phrasings, base_model=base_ref, metrics=metrics, skills=[skill_id],
                     version=version)
    return {"exact_match_test": own, "with_brick_on_emergent": others, "steps": result.steps,
            "seconds": round(time.perf_counter() - t, 1)}


def add_emergent_bricks(model_dir: Path, library: Library, data_dir: Path, cfg: EmergentConfig = EmergentConfig(),
                        *, progress: Progress = _noop) -> dict[str, dict[str, float]]:
    """Discover one keep-only emergent brick per base skill on the single-skill train split, measure each on the
    validation split, and add those that pass the quality gate to `library`; returns each candidate's metrics
    (`added`: 1.0 when it passed and was added)."""
    from bricks.emergent.pipeline import (
        add_candidates,
        gate_candidates,
        profile_skills,
        skill_candidates,
        skill_examples,
    )

    def rows_of(split: str) -> list[InstructionRow]:
        return [r for r in read_rows(split_path(data_dir, "single", split))
                if len(r.skills) == 1 and r.skills[0] in EMERGENT_SKILLS]

    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    pairs, instructions = skill_examples(rows_of("train"))
    profile = profile_skills(model, tokenizer, pairs, attribution=cfg.criterion == "attribution",
                             on_progress=lambda stage, done, total: progress(f"emergent {stage}", done, total, None))
    candidates = skill_candidates(model, profile, instructions, budget=cfg.budget, criterion=cfg.criterion,
                                  scope=cfg.scope, prefix=cfg.prefix)
    gated = gate_candidates(model, tokenizer, candidates, rows_of("validation"))
    _, refused = add_candidates(library, gated, min_retention=cfg.min_retention, min_support=cfg.min_support)
    progress("emergent bricks", len(gated), len(gated), None)
    refused_ids = {c.brick_id for c in refused}
    return {c.brick_id: {**c.metrics, "added": float(c.brick_id not in refused_ids)} for c in gated}


def _swap_into_place(stage: Path, out: Path) -> None:
    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(stage, out)
    if old.exists():
        shutil.rmtree(old)
