from index import SearchHit
from policies import BASE_KEY, TopKWeighted, TopOne


def test_top1_threshold_base_and_empty():
    assert TopOne(0.5).route([SearchHit("a@1", 0.9, "x"), SearchHit("b@1", 0.8, "y")]).bricks[0].key == "a@1"
    low = TopOne(0.5).route([SearchHit("a@1", 0.3, "x")])
    assert low.is_base and "0.300" in low.reason and "threshold 0.5" in low.reason
    assert TopOne().route([SearchHit(BASE_KEY, 0.95, "x"), SearchHit("a@1", 0.9, "y")]).is_base
    assert TopOne().route([]).is_base


def test_topk_weights_sum_to_one_and_stop_at_base():
    route = TopKWeighted(k=3, threshold=0.5, temperature=0.1).route(
        [SearchHit("a@1", 0.9, "x"), SearchHit("b@1", 0.8, "y"), SearchHit(BASE_KEY, 0.7, "z"), SearchHit("c@1", 0.69, "w")])
    assert [b.key for b in route.bricks] == ["a@1", "b@1"]
    assert abs(sum(b.weight for b in route.bricks) - 1) < 1e-9
    assert route.bricks[0].weight > route.bricks[1].weight
