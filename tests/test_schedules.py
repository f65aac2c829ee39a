"""Learning-rate schedules at the points where their formulas are easy to check by hand."""
import numpy as np
import pytest

from slidenet.errors import SlidenetError
from slidenet.training.schedules import SCHEDULES, make_schedule


def test_constant():
    lr = make_schedule("constant", 0.1, 100)
    assert [lr(s) for s in (0, 50, 99, 100)] == [0.1] * 4


def test_step_default_drops_every_third_of_training():
    lr = make_schedule("step", 0.1, 90)   # step_every = 90 // 3 = 30
    assert lr(0) == lr(29) == 0.1
    assert lr(30) == pytest.approx(0.01) and lr(59) == pytest.approx(0.01)
    assert lr(60) == pytest.approx(0.001) and lr(89) == pytest.approx(0.001)


def test_step_with_explicit_interval_and_gamma():
    lr = make_schedule("step", 1.0, 100, step_every=10, gamma=0.5)
    assert [lr(s) for s in (0, 9, 10, 19, 20, 35)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]


def test_step_with_fewer_steps_than_drops():
    lr = make_schedule("step", 1.0, 2)    # 2 // 3 == 0, so the interval falls back to 1
    assert [lr(0), lr(1)] == [1.0, pytest.approx(0.1)]


def test_cosine():
    lr = make_schedule("cosine", 0.1, 100, min_lr=0.001)
    assert lr(0) == pytest.approx(0.1)
    assert lr(50) == pytest.approx((0.1 + 0.001) / 2)       # cos(pi/2) = 0: halfway
    assert lr(25) == pytest.approx(0.001 + 0.099 * (1 + 2 ** -0.5) / 2)   # cos(pi/4) = 1/sqrt(2)
    assert lr(100) == pytest.approx(0.001)
    assert lr(150) == pytest.approx(0.001)                   # past the end it stays at the floor


def test_warmup_cosine_explicit_warmup():
    lr = make_schedule("warmup-cosine", 0.1, 110, warmup_steps=10)
    assert lr(0) == pytest.approx(0.01)                      # 0.1 * 1/10: ~0 but not wasted
    assert lr(4) == pytest.approx(0.05)                      # 0.1 * 5/10
    assert lr(9) == pytest.approx(0.1)                       # warm-up ends at the peak
    assert lr(10) == pytest.approx(0.1)                      # the cosine starts at the peak
    assert lr(60) == pytest.approx(0.05)                     # halfway through the 100 cosine steps
    assert lr(110) == pytest.approx(0.0)


def test_warmup_cosine_default_warmup_is_five_percent():
    lr = make_schedule("warmup-cosine", 1.0, 1000, min_lr=0.1)   # warm-up 50 steps
    assert lr(0) == pytest.approx(1 / 50)
    assert lr(49) == pytest.approx(1.0) and lr(50) == pytest.approx(1.0)
    assert lr(525) == pytest.approx(0.55)                    # middle of the 950 cosine steps
    assert lr(1000) == pytest.approx(0.1)
    values = [lr(s) for s in range(1001)]
    assert np.all(np.diff(values[:50]) > 0) and np.all(np.diff(values[50:]) <= 0)


def test_warmup_cosine_short_runs():
    assert make_schedule("warmup-cosine", 1.0, 10)(0) == pytest.approx(1.0)   # warm-up of 1 step
    one = make_schedule("warmup-cosine", 1.0, 1)              # no room for a warm-up at all
    assert one(0) == pytest.approx(1.0) and one(1) == pytest.approx(0.0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_values_are_python_floats(name):
    # np.float64 rates would upcast float32 arithmetic; NumPy integer steps must not leak in.
    lr = make_schedule(name, np.float32(0.1), np.int64(100))
    for step in (0, np.int64(40), 99):
        assert type(lr(step)) is float


def test_unknown_name_lists_choices():
    with pytest.raises(SlidenetError) as err:
        make_schedule("linear", 0.1, 100)
    assert "'linear'" in str(err.value)
    assert all(n in str(err.value) for n in ("constant", "step", "cosine", "warmup-cosine"))


@pytest.mark.parametrize("name, args, kwargs, text", [
    ("constant", (0.0, 100), {}, "base_lr=0.0"),
    ("constant", (0.1, 0), {}, "total_steps=0"),
    ("constant", (0.1, 10.5), {}, "total_steps=10.5"),
    ("step", (0.1, 100), {"step_every": 0}, "step_every=0"),
    ("step", (0.1, 100), {"gamma": 2.0}, "gamma=2.0"),
    ("cosine", (0.1, 100), {"min_lr": 0.2}, "min_lr=0.2"),
    ("warmup-cosine", (0.1, 100), {"warmup_steps": 100}, "warmup_steps=100"),
    ("cosine", (0.1, 100), {"warmup_steps": 10}, "only to the 'warmup-cosine'"),
    ("cosine", (0.1, 100), {"step_every": 10}, "only to the 'step'"),
])
def test_bad_arguments_are_named(name, args, kwargs, text):
    with pytest.raises(SlidenetError, match=text):
        make_schedule(name, *args, **kwargs)
