"""Composition policies: how the several bricks a route picked for one step are combined into one configuration."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Composition"]

_DENSITY_METHODS = ("ties", "ties_svd", "dare_linear", "dare_ties", "dare_linear_svd", "dare_ties_svd",
                    "magnitude_prune")


@dataclass(frozen=True)
class Composition:
    """Merge settings for steps routed to more than one brick.

    `merge` combines LoRA bricks (PEFT combination types: cat, svd, linear, ties, dare_linear, dare_ties, ...;
    `density` is the fraction kept by ties/dare/prune); `mask_merge` combines emergent bricks (union or
    intersection of their neurons). A step with a single LoRA brick runs it as is.
    """

    merge: str = "cat"
    density: float | None = None
    mask_merge: str = "union"

    def __post_init__(self) -> None:
        if self.merge == "single":
            raise ValueError("Composition.merge 'single' cannot combine bricks; choose cat, svd, linear, ties, ...")
        if self.merge in _DENSITY_METHODS and self.density is None:
            object.__setattr__(self, "density", 0.5)
