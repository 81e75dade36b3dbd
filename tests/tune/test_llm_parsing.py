import pytest

from hgpso.tune import (
    Categorical,
    Float,
    Int,
    LLMStats,
    SearchSpace,
    extract_json,
    parse_points,
    points_schema,
)

S = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "n": Int(1, 8), "act": Categorical(["a", "b"])})


@pytest.mark.parametrize(
    "text",
    [
        '{"points": [{"lr": 0.1, "n": 2, "act": "a"}]}',
        'Sure! ```json\n{"points": [{"lr": 0.1, "n": 2, "act": "a"}]}\n``` hope it helps',
        'Here you go: {"points": [{"lr": 0.1, "n": 2, "act": "a"}]} and more text',
        '[{"lr": 0.1, "n": 2, "act": "a"}]',
    ],
)
def test_extract_json_tolerates_wrapping(text):
    got = parse_points(extract_json(text), S, k=3)
    assert got == [{"lr": 0.1, "n": 2, "act": "a"}]


@pytest.mark.parametrize("text", ["", "   ", "no json here", "{broken", None])
def test_extract_json_rejects_garbage(text):
    with pytest.raises(ValueError):
        extract_json(text)


def test_parse_points_validates_clips_and_dedups():
    stats = LLMStats()
    answer = {
        "points": [
            {"lr": 5.0, "n": 3.4, "act": "b"},  # clipped / rounded
            {"lr": 5.0, "n": 3, "act": "b"},  # duplicate of the first after clipping
            {"lr": "oops", "n": 1, "act": "a"},  # wrong type
            {"lr": 0.01, "n": 1},  # missing key
            {"lr": 0.01, "n": 1, "act": "z"},  # not a choice
            {"lr": 0.02, "n": 2, "act": "a", "extra": 1},  # extra keys ignored
            [0.03, 4, "b"],  # list form in name order
            {"lr": 0.5, "n": 5, "act": "a"},  # already tried
            "text",
        ]
    }
    seen = {S.key({"lr": 0.5, "n": 5, "act": "a"})}
    got = parse_points(answer, S, k=10, seen=seen, stats=stats)
    assert got == [
        {"lr": 1.0, "n": 3, "act": "b"},
        {"lr": 0.02, "n": 2, "act": "a"},
        {"lr": 0.03, "n": 4, "act": "b"},
    ]
    assert stats.proposed == 9 and stats.accepted == 3 and stats.rejected == 6


def test_parse_points_caps_at_k_and_handles_shapes():
    pts = [{"lr": 0.001 * (i + 1), "n": 1, "act": "a"} for i in range(5)]
    assert len(parse_points({"points": pts}, S, k=2)) == 2
    assert parse_points(pts[0], S, k=2) == [pts[0]]
    assert parse_points({"suggestions": pts[:1]}, S, k=2) == [pts[0]]
    with pytest.raises(ValueError):
        parse_points({"points": "nope"}, S, k=2)
    assert parse_points({"points": []}, S, k=2) == []


def test_schema_shape():
    sch = points_schema(S, 3)
    item = sch["properties"]["points"]["items"]
    assert sch["properties"]["points"]["maxItems"] == 3
    assert item["properties"]["n"] == {"type": "integer"}
    assert item["properties"]["act"] == {"enum": ["a", "b"]}
    assert set(item["required"]) == {"lr", "n", "act"}


def test_huge_integers_are_rejected_points_not_crashes():
    """float(10**400) raises OverflowError; validation turns it into a rejected point."""
    import json

    big = "9" * 400
    text = '{"points": [{"lr": BIG, "n": 2, "act": "a"}, {"lr": 0.01, "n": BIG, "act": "b"},'
    answer = json.loads((text + ' {"lr": 0.01, "n": 3, "act": "a"}]}').replace("BIG", big))
    stats = LLMStats()
    assert parse_points(answer, S, k=3, stats=stats) == [{"lr": 0.01, "n": 3, "act": "a"}]
    assert stats.proposed == 3 and stats.rejected == 2 and stats.accepted == 1
    with pytest.raises(ValueError, match="too large"):
        S["n"].coerce(int(big))
