import math

import numpy as np
import pytest

from hgpso.tune import Categorical, Float, Int, SearchSpace


def test_float_linear_and_log_roundtrip():
    f = Float(-2.0, 6.0)
    assert f.decode(0.0) == -2.0 and f.decode(1.0) == 6.0 and f.decode(0.5) == 2.0
    g = Float(1e-4, 1.0, log=True)
    assert math.isclose(g.decode(0.5), 1e-2, rel_tol=1e-9)
    for v in (1e-4, 3e-3, 0.5, 1.0):
        assert math.isclose(g.decode(g.encode(v)), v, rel_tol=1e-9)


def test_int_buckets_are_equal_and_in_bounds():
    p = Int(1, 4)
    u = np.linspace(0, 1, 4001)
    vals = [p.decode(x) for x in u]
    counts = np.bincount(vals)[1:]
    assert set(vals) == {1, 2, 3, 4}
    assert counts.max() - counts.min() <= 2
    assert all(p.decode(p.encode(v)) == v for v in range(1, 5))
    q = Int(1, 1024, log=True)
    assert q.decode(0.0) == 1 and q.decode(1.0) == 1024


def test_categorical_and_coerce():
    c = Categorical(["relu", "tanh", "gelu"])
    assert [c.decode(x) for x in (0.0, 0.34, 0.99, 1.0)] == ["relu", "tanh", "gelu", "gelu"]
    assert c.decode(c.encode("tanh")) == "tanh"
    with pytest.raises(ValueError):
        c.coerce("swish")
    assert Categorical([16, 32]).coerce("32") == 32


def test_space_coerce_clips_and_type_checks():
    s = SearchSpace({"lr": Float(1e-4, 1.0, log=True), "n": Int(1, 8), "act": Categorical("ab")})
    assert s.coerce({"lr": 5.0, "n": 9.6, "act": "b"}) == {"lr": 1.0, "n": 8, "act": "b"}
    assert s.coerce({"lr": "0.01", "n": -3, "act": "a"}) == {"lr": 0.01, "n": 1, "act": "a"}
    for bad in (
        {"lr": True, "n": 1, "act": "a"},
        {"lr": [1], "n": 1, "act": "a"},
        {"lr": "x", "n": 1, "act": "a"},
        {"lr": float("nan"), "n": 1, "act": "a"},
    ):
        with pytest.raises((TypeError, ValueError)):
            s.coerce(bad)
    with pytest.raises(KeyError):
        s.coerce({"lr": 0.1})
    with pytest.raises(TypeError):
        s.coerce([0.1, 1, "a"])


def test_space_validation_errors():
    with pytest.raises(ValueError):
        Float(1.0, 1.0)
    with pytest.raises(ValueError):
        Float(0.0, 1.0, log=True)
    with pytest.raises(ValueError):
        Int(3, 1)
    with pytest.raises(ValueError):
        Categorical([])
    with pytest.raises(TypeError):
        SearchSpace({"x": (0, 1)})
    with pytest.raises(ValueError):
        SearchSpace({})


def test_decode_is_total_and_initial_points_fixed_per_seed():
    s = SearchSpace({"a": Float(0, 1), "b": Int(0, 3), "c": Categorical([1, 2])})
    for u in np.random.default_rng(0).uniform(-1, 2, size=(50, 3)):
        s.coerce(s.decode(u))  # never raises, always in bounds
    a, b = s.initial_unit(3, 5), s.initial_unit(3, 5)
    assert np.array_equal(a, b) and not np.array_equal(a, s.initial_unit(4, 5))


@pytest.mark.parametrize(
    ("make", "argument"),
    [
        (lambda: Int(math.nan, 3), "Int low must be finite"),
        (lambda: Int(0, math.inf), "Int high must be finite"),
        (lambda: Int(0, 10**400), "Int high must be finite"),
        (lambda: Int(0, 2.5), "Int high must be an integer"),
        (lambda: Float(math.nan, 1.0), "Float low must be finite"),
        (lambda: Float(0.0, math.inf), "Float high must be finite"),
        (lambda: Float(-math.inf, 0.0, log=True), "Float low must be finite"),
        (lambda: Float(-1e308, 1e308), "Float span high - low overflows"),
        (lambda: Int(-(10**308), 10**308), "Int span high - low overflows"),
    ],
)
def test_non_finite_bounds_and_overflowing_spans_are_refused(make, argument):
    # issue 24: these gave raw conversion errors (int(nan)) or decoded to NaN
    with pytest.raises(ValueError, match=argument):
        make()


def test_bounds_of_the_wrong_type_are_refused():
    with pytest.raises(TypeError, match="Float low must be a number"):
        Float("0", 1.0)
    with pytest.raises(TypeError, match="Int high must be a number"):
        Int(0, True)


def test_the_widest_allowed_spans_decode_to_finite_values():
    # just inside the float range: every decoded value is finite and within bounds
    f, i = Float(-8e307, 8e307), Int(-(10**307), 10**307)
    for u in (0.0, 0.25, 0.5, 1.0):
        assert math.isfinite(f.decode(u)) and -8e307 <= f.decode(u) <= 8e307
        assert -(10**307) <= i.decode(u) <= 10**307
    assert Float(1e-300, 1e300, log=True).decode(0.5) == pytest.approx(1.0)
