"""Customized bricks: LoRA adapters in PEFT's format."""

from bricks.lora.brick import LoraBrick, LoraBrickConfig

__all__ = ["LoraBrick", "LoraBrickConfig"]
