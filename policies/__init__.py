"""Policies: how instructions are decomposed into steps and routed to bricks."""

from policies.decompose import DecompositionError, Decomposer, RuleDecomposer, SingleStep, normalize_step
from policies.routing import BASE_KEY, Route, RoutedBrick, RoutingPolicy, TopKWeighted, TopOne

__all__ = [
    "BASE_KEY", "Decomposer", "DecompositionError", "Route", "RoutedBrick", "RoutingPolicy", "RuleDecomposer",
    "SingleStep", "TopKWeighted", "TopOne", "normalize_step",
]
