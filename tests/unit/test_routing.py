from bricks import BaseModelRef
from index import SearchHit
from policies import BASE_KEY, TopKWeighted, TopOne

_BASE = BaseModelRef(name="tiny", fingerprint="sha256:aaa")


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


# -- emergent routing: base-skill steps on their emergent (ffn_mask) brick ------------------------------------------

def _mask_brick(root, brick_id, examples, metrics=None, **extra):
    """A small ffn_mask brick folder (2 layers x 16 neurons)."""
    import numpy as np
    from safetensors.numpy import save_file

    from bricks import BrickManifest, file_entry

    folder = root / f"src-{brick_id}"
    folder.mkdir(parents=True)
    save_file({f"layers.{i}": (np.arange(16) % 3 == 0).astype(np.uint8) for i in range(2)},
              str(folder / "mask.safetensors"))
    BrickManifest(id=brick_id, version=1, kind="ffn_mask", description=f"Neurons of {brick_id}.", examples=examples,
                  base_model=_BASE, files=[file_entry(folder, "mask.safetensors")], metrics=metrics or {},
                  created="2026-01-01T00:00:00+00:00", **extra).save(folder / "brick.json")
    return folder


def _fake(key, examples, metrics=None, kind="ffn_mask", **extra):
    from types import SimpleNamespace

    return SimpleNamespace(key=key, manifest=SimpleNamespace(kind=kind, examples=examples, metrics=metrics or {},
                                                             **extra))


_BASE_TEXTS = ["Reverse the text.", "Sort the letters.", "Count the letters."]


def _base_bricks():
    return [_fake("e-rev@1", ["Reverse the text."], {"retention_validation": 1.0, "density": 0.3}),
            _fake("e-rev2@1", ["Reverse the text."], {"retention_validation": 1.0, "density": 0.2}),
            _fake("e-sort@1", ["Sort the letters."], {"retention_validation": 0.9898}),
            _fake("e-count@1", ["Count the letters."], {"retention_validation": 1.0}, routable=False),
            _fake("cluster@1", ["Shout it."], {"retention_validation": 0.5}),
            _fake("plain@1", ["Whisper it."]),
            _fake("lora@1", ["Reverse the text."], {"retention_validation": 0.1}, kind="lora")]


def test_emergent_routes_hide_base_duplicates_and_pick_the_best_brick_per_base_example():
    from policies.routing import emergent_routes

    routes = emergent_routes(_base_bricks(), _BASE_TEXTS, 0.99)
    # duplicates of base examples, the not-routable one, and the measured one under the threshold are hidden
    assert routes.hidden == {"e-rev@1", "e-rev2@1", "e-sort@1", "e-count@1", "cluster@1"}
    assert dict(routes.by_text) == {"Reverse the text.": "e-rev2@1"}  # same retention: the smaller mask
    looser = emergent_routes(_base_bricks(), _BASE_TEXTS, 0.98)
    assert dict(looser.by_text) == {"Reverse the text.": "e-rev2@1", "Sort the letters.": "e-sort@1"}
    off = emergent_routes(_base_bricks(), _BASE_TEXTS, None)
    assert off.hidden == {"e-rev@1", "e-rev2@1", "e-sort@1", "e-count@1"} and not off.by_text


def test_route_base_only_for_a_base_route_near_a_served_example():
    from policies.routing import emergent_routes

    routes = emergent_routes(_base_bricks(), _BASE_TEXTS, 0.99)
    near = [SearchHit(BASE_KEY, 0.8, "Reverse the text."), SearchHit("a@1", 0.5, "x")]
    route = routes.route_base(TopOne().route(near), near, 0.5)
    assert [b.key for b in route.bricks] == ["e-rev2@1"] and route.bricks[0].score == 0.8
    assert "retention 1.0000 >= 0.99" in route.reason and route.best_score == 0.8
    assert routes.route_base(TopOne().route(near), near, 0.9) is None  # not near enough to say which skill
    sort = [SearchHit(BASE_KEY, 0.9, "Sort the letters.")]
    assert routes.route_base(TopOne().route(sort), sort, 0.5) is None  # its brick is under the threshold
    lora = [SearchHit("a@1", 0.9, "x"), SearchHit(BASE_KEY, 0.8, "Reverse the text.")]
    assert routes.route_base(TopOne().route(lora), lora, 0.5) is None  # a brick's route is never replaced


def test_emergent_min_retention_is_checked():
    import pytest

    from bricks.errors import BrickworkError

    for bad in (1.5, -0.1):
        with pytest.raises(BrickworkError, match=f"emergent_min_retention {bad} must be in"):
            TopOne(emergent_min_retention=bad)
        with pytest.raises(BrickworkError, match=f"emergent_min_retention {bad} must be in"):
            TopKWeighted(emergent_min_retention=bad)
    assert TopOne().emergent_min_retention == 0.99
    assert TopOne(emergent_min_retention=None).emergent_min_retention is None


def _planner(tmp_path, routing):
    from bricks import Library
    from index import HashingEmbedder
    from orchestrator.library_index import open_index
    from orchestrator.planner import Planner

    lib = Library.create(tmp_path / "lib", _BASE, _BASE_TEXTS)
    lib.add(_mask_brick(tmp_path, "emergent-reverse", ["Reverse the text.", "Shout the text loudly."],
                        {"retention_validation": 1.0, "density": 0.3}, skills=["reverse"]))
    lib.add(_mask_brick(tmp_path, "emergent-sort", ["Sort the letters."], {"retention_validation": 0.98},
                        skills=["sort"]))
    lib.add(_mask_brick(tmp_path, "shout", ["Shout the text."], skills=["shout"]))
    return Planner(lib, open_index(lib, HashingEmbedder()), routing=routing)


def _routed(planner, instruction):
    return [[b.key for b in s.config.bricks] for s in planner.plan(instruction, "abc").steps]


def test_planner_routes_base_steps_to_emergent_bricks_above_the_threshold(tmp_path):
    planner = _planner(tmp_path, TopOne())
    plan = planner.plan("Reverse the text, then sort the letters.", "abc")
    assert [[(b.key, b.kind) for b in s.config.bricks] for s in plan.steps] == [[("emergent-reverse@1", "ffn_mask")],
                                                                                 []]
    assert plan.steps[0].route.startswith("emergent emergent-reverse@1 (retention 1.0000 >= 0.99)")
    assert plan.steps[0].config.mask_mode == "keep"
    # the emergent brick holds this very phrasing (score 1.0 against shout's lower one), but never takes its step
    hits = planner.index.search("Shout the text loudly.", 3)
    assert hits[0].key == "emergent-reverse@1" and hits[0].score > 0.99 > hits[1].score >= 0.5
    assert _routed(planner, "Shout the text loudly.") == [["shout@1"]]
    assert _routed(planner, "Count the letters.") == [[]]  # no emergent brick for count: the base model
    planner.routing = TopOne(emergent_min_retention=0.97)
    assert _routed(planner, "Sort the letters.") == [["emergent-sort@1"]]
    # a later step works on another step's output, not on the task inputs the retention was measured on
    assert _routed(planner, "Reverse the text, then sort the letters.") == [["emergent-reverse@1"], []]
    planner.routing = TopOne(emergent_min_retention=None)
    assert _routed(planner, "Reverse the text, then sort the letters.") == [[], []]
    assert _routed(planner, "Shout the text loudly.") == [["shout@1"]]


def test_expected_routes_follow_the_emergent_threshold(tmp_path):
    from orchestrator.evaluation import expected_routes

    lib = _planner(tmp_path, TopOne()).library
    assert expected_routes(lib) == {"shout": "shout"}
    assert expected_routes(lib, emergent_min_retention=0.99) == {"shout": "shout", "reverse": "emergent-reverse"}
    assert expected_routes(lib, emergent_min_retention=0.95) == {"shout": "shout", "reverse": "emergent-reverse",
                                                                 "sort": "emergent-sort"}
