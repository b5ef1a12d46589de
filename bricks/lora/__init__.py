"""Customized bricks: LoRA adapters in PEFT's format."""

from bricks.lora.brick import LoraBrick, LoraBrickConfig
from bricks.lora.merge import LoraTensors, merge_loras, module_order
from bricks.lora.merge_cache import MergeCache, MergeStats

__all__ = ["LoraBrick", "LoraBrickConfig", "LoraTensors", "MergeCache", "MergeStats", "merge_loras", "module_order"]
