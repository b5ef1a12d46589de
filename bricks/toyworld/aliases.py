"""Routing documents for the toy world: other ways users ask for each skill, written in a clean room.

Their authors saw only the nine skills' definitions and trained phrasings (not the paraphrase or hard splits,
not the code). Per skill (`world/aliases.json`): descriptions (what it does, in varied words) and phrasings
(synonyms, jargon, indirect and casual requests); `apply_aliases` indexes them as brick aliases (LoRA skills) or
base aliases (base skills) of a library. The model never sees them: a hit on one stands for the skill's trained
phrasing. `out_of_scope_requests`: requests none of the skills serves (near misses included).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from bricks.toyworld.skills import SKILLS

__all__ = ["ALIASES_FILE", "skill_aliases", "out_of_scope_requests", "apply_aliases"]

ALIASES_FILE = Path(__file__).parent / "world" / "aliases.json"


@functools.cache
def _documents(path: Path = ALIASES_FILE) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def skill_aliases(skill_id: str) -> list[str]:
    """A skill's descriptions then phrasings, minus any that repeat its trained phrasings."""
    trained = set(SKILLS[skill_id].phrasings)
    doc = _documents()["skills"][skill_id]
    return [t for t in (*doc["descriptions"], *doc["phrasings"]) if t not in trained]


def out_of_scope_requests() -> list[str]:
    """Requests that none of the toy world's skills serves."""
    return list(_documents()["out_of_scope"])


def apply_aliases(library) -> None:
    """Give every stored version of the library's LoRA bricks its skills' aliases, and each base skill's aliases
    to its first trained phrasing (a base example); other bricks and base examples are left as they are."""
    base: dict[str, list[str]] = dict(library.base_aliases)
    for skill_id, skill in SKILLS.items():
        if skill.emergent and skill.phrasings[0] in library.base_examples:
            base[skill.phrasings[0]] = skill_aliases(skill_id)
    library.set_base_aliases(base)
    for brick_id in library.ids():
        for brick in library.versions(brick_id):
            skills = [s for s in (brick.manifest.skills or [brick.id]) if s in SKILLS and not SKILLS[s].emergent]
            if brick.manifest.kind == "lora" and skills:
                library.set_aliases(brick.id, [a for s in skills for a in skill_aliases(s)], version=brick.version)
