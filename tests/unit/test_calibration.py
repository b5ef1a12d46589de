"""Per-brick threshold fitting and routing metrics, on hand-made scored examples."""

import pytest

from index import SearchHit
from policies import TopOne
from policies.calibration import ScoredExample, fit_thresholds, route_of, routing_metrics

EXAMPLES = [
    ScoredExample("a", "a", 0.9), ScoredExample("a", "a", 0.8), ScoredExample("a", "a", 0.45),
    ScoredExample(None, "a", 0.55),  # out of scope, but nearest to a
    ScoredExample("b", "b", 0.7), ScoredExample(None, "b", 0.65), ScoredExample("a", "b", 0.6),
    ScoredExample(None, None, 0.9),  # nearest to the base entry
]


def test_thresholds_move_only_as_far_as_the_examples_demand():
    t = fit_thresholds(EXAMPLES, default=0.5)
    assert t["a"] == pytest.approx(0.43)  # keeping the 0.45 positive is worth one false positive (F1 6/7)
    assert t["b"] == pytest.approx(0.675)  # just above the negatives at 0.65 and 0.6
    assert fit_thresholds([ScoredExample("a", "a", 0.9)], default=0.5) == {"a": 0.5}  # nothing to learn


def test_metrics_before_and_after():
    before = routing_metrics(EXAMPLES, {}, 0.5)
    after = routing_metrics(EXAMPLES, fit_thresholds(EXAMPLES, 0.5), 0.5)
    assert before.recall["a"] == pytest.approx(2 / 4) and after.recall["a"] == pytest.approx(3 / 4)
    assert before.precision["b"] == pytest.approx(1 / 3) and after.precision["b"] == 1.0
    assert after.accuracy > before.accuracy
    assert route_of(ScoredExample(None, "b", 0.66), {"b": 0.675}, 0.5) is None


def test_router_uses_per_brick_thresholds_for_any_version():
    router = TopOne(threshold=0.5, thresholds={"b": 0.675})
    assert router.route([SearchHit("b@3", 0.66, "x")]).is_base
    assert not router.route([SearchHit("a@1", 0.66, "x")]).is_base
