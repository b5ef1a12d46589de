"""Policies: how instructions are decomposed into steps and routed to bricks."""

from policies.composition import Composition
from policies.decompose import Decomposer, DecompositionError, RuleDecomposer, SingleStep, normalize_step
from policies.model_decompose import ModelDecomposer, StepListGrammar, parse_step_list
from policies.routing import BASE_KEY, Route, RoutedBrick, RoutingPolicy, TopKWeighted, TopOne

__all__ = [
    "BASE_KEY", "Composition", "Decomposer", "DecompositionError", "ModelDecomposer", "Route", "RoutedBrick", "RoutingPolicy", "RuleDecomposer",
    "SingleStep", "StepListGrammar", "TopKWeighted", "TopOne", "normalize_step", "parse_step_list",
]
