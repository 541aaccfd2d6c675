"""MAE's learning-rate rule and schedule in closed form."""

import math

import pytest

from medscale.trainer.schedule import learning_rate, scaled_lr


def test_the_linear_scaling_rule():
    assert scaled_lr(1.5e-4, 4096) == pytest.approx(2.4e-3)  # the MedMAE recipe: 64 x 8 GPUs x 8 nodes


def test_warmup_then_half_cycle_cosine():
    base, warmup, total = 1.0, 10, 110
    assert learning_rate(0, base, warmup, total) == 0.0
    assert learning_rate(5, base, warmup, total) == pytest.approx(0.5)
    assert learning_rate(10, base, warmup, total) == pytest.approx(1.0)
    assert learning_rate(60, base, warmup, total) == pytest.approx(0.5)  # half-way down the cosine
    assert learning_rate(35, base, warmup, total) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert learning_rate(110, base, warmup, total, min_lr=0.1) == pytest.approx(0.1)
    assert learning_rate(500, base, warmup, total) == pytest.approx(0.0)  # past the end: stays at the floor
