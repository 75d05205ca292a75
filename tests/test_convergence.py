"""Convergence status from loss and held-out histories: every status reachable, and its edges."""

from __future__ import annotations

import math

import pytest

from longrecall.convergence import (
    MIN_ACCURACY_GAIN,
    NEAR_CHANCE_MARGIN,
    NEAR_CHANCE_MULTIPLE,
    RULE_VERSION,
    STATUSES,
    assess,
    near_chance,
    status,
    stops_on_plateau,
)


def history(losses):
    return [{"step": i + 1, "loss": x} for i, x in enumerate(losses)]


def evals(points):
    return [{"step": s, "accuracy": a} for s, a in points]


FLAT = [2.0] * 400


def test_converged_when_the_final_accuracy_reaches_the_target():
    assert status(history(FLAT), evals([(200, 0.5), (400, 0.995)]), 0.99) == "converged"
    # reaching it earlier and losing it again is not converged
    assert status(history(FLAT), evals([(200, 0.995), (400, 0.5)]), 0.99) != "converged"
    # no target: never converged
    assert status(history(FLAT), evals([(400, 1.0)]), None) != "converged"


def test_learning_when_accuracy_rises_in_the_last_quarter():
    points = [(100, 0.1), (200, 0.1), (300, 0.1), (400, 0.1 + 2 * MIN_ACCURACY_GAIN)]
    out = assess(history(FLAT), evals(points), 0.99)
    assert out["status"] == "learning" and out["accuracy_gain"] == pytest.approx(2 * MIN_ACCURACY_GAIN)


def test_learning_when_the_loss_still_falls_at_chance_accuracy():
    """MQAR's plateau: accuracy at chance but the loss still falling is not yet a plateau."""
    losses = [5.5 - 0.002 * i for i in range(400)]
    out = assess(history(losses), evals([(100, 0.01), (200, 0.01), (300, 0.01), (400, 0.01)]), 0.99)
    assert out["status"] == "learning" and out["loss_drop"] > 0.02


def test_plateau_when_neither_accuracy_nor_loss_moves():
    out = assess(history(FLAT), evals([(100, 0.3), (200, 0.302), (300, 0.3), (400, 0.301)]), 0.99)
    assert out["status"] == "plateau"
    assert out["accuracy_gain"] < MIN_ACCURACY_GAIN and abs(out["loss_drop"]) < 1e-12


def test_the_frontier_slow_starts_are_learning_and_its_plateaus_are_not():
    """Rule version 2 against the frontier's measured runs (docs/results.md): Gated DeltaNet at width 64
    gained 0.0095 accuracy and 1.6% loss in its last quarter of 1,500 steps and converged when trained
    on; MoM at width 128 (3e-3) gained 0.003 and 0.2%."""
    def run(accuracies, loss_drop):
        steps = [900, 1000, 1100, 1200, 1300, 1400, 1500]
        losses = [4.8] * 1125 + [4.8 * (1 - loss_drop)] * 375
        return assess(history(losses), evals(list(zip(steps, accuracies, strict=True))), 0.99)

    slow_start = run([0.018, 0.015, 0.02, 0.022, 0.027, 0.03, 0.029], 0.016)
    assert slow_start["status"] == "learning"
    assert slow_start["accuracy_gain"] < 0.01 and slow_start["loss_drop"] < 0.02  # version 1 stopped it
    flat = run([0.012, 0.013, 0.012, 0.015, 0.015, 0.016, 0.015], 0.002)
    assert flat["status"] == "plateau"
    assert slow_start["rule_version"] == flat["rule_version"] == RULE_VERSION  # train stores it with the run


def test_diverged_on_a_non_finite_loss_or_a_blown_up_loss():
    assert status(history(FLAT[:-1] + [math.nan]), evals([(400, 0.3)]), 0.99) == "diverged"
    assert status(history(FLAT), evals([(400, 0.3)]), 0.99, diverged=True) == "diverged"
    blown = [2.0] * 300 + [9.0] * 100  # finite, but ended far above its best
    assert status(history(blown), evals([(200, 0.3), (400, 0.01)]), 0.99) == "diverged"


def test_every_status_is_reachable():
    seen = {
        status(history(FLAT), evals([(400, 1.0)]), 0.99),
        status(history(FLAT), evals([(100, 0.1), (400, 0.5)]), 0.99),
        status(history(FLAT), evals([(100, 0.1), (400, 0.1)]), 0.99),
        status(history(FLAT), evals([(400, 0.1)]), 0.99, diverged=True),
    }
    assert seen == set(STATUSES)


def test_too_short_to_tell_counts_as_learning():
    """One evaluation and no earlier loss window: no trend can be measured, so the run is not
    called a plateau (its accuracy is a lower bound either way)."""
    assert status(history([3.0]), evals([(1, 0.1)]), 0.99) == "learning"
    assert status([], [], 0.99) == "learning"


def test_a_slow_rise_with_a_noisy_last_evaluation_is_still_learning():
    """Window means, not the last evaluation: attention under the all-position loss at lr 3e-4 rose
    from 0.065 to 0.11 over its last 1,200 steps but its last evaluation dipped (recipe study)."""
    points = [(1300, 0.065), (1400, 0.076), (1500, 0.072), (1600, 0.088), (1700, 0.099), (1800, 0.096),
              (1900, 0.105), (2000, 0.102), (2100, 0.109), (2200, 0.109), (2300, 0.11), (2400, 0.119), (2500, 0.108)]
    history = [{"step": i + 1, "loss": 5.0} for i in range(2500)]
    out = assess(history, evals(points), 0.99)
    assert out["status"] == "learning" and out["accuracy_gain"] > 0.02


def test_a_plateau_near_chance_may_not_stop_early():
    """Rule version 3: near chance the trend cannot tell MQAR's pre-transition plateau from a capacity
    limit, so a plateau there does not stop a run before max_steps; the status itself is unchanged."""
    chance = 1 / 128
    low = evals([(100, 0.01), (200, 0.012), (300, 0.011), (400, 0.011)])
    out = assess(history(FLAT), low, 0.99, chance=chance)
    assert out["status"] == "plateau" and out["near_chance"] is True
    assert not stops_on_plateau(low, chance)
    # the best evaluation decides: one evaluation at 5x chance is leaving it
    left = evals([(100, 0.01), (200, NEAR_CHANCE_MULTIPLE * chance), (300, 0.011), (400, 0.011)])
    assert not near_chance(left, chance) and stops_on_plateau(left, chance)
    # a task without a chance accuracy keeps version 2's stops
    assert stops_on_plateau(low, None) and assess(history(FLAT), low, 0.99)["near_chance"] is False
    assert not near_chance([], chance)


def test_near_chance_on_a_few_class_task_is_a_margin_not_a_multiple():
    """A yes/no task (chance 0.5): 5x chance would be every accuracy; the margin keeps "near" to 0.55."""
    flat = evals([(100, 0.5), (200, 0.52), (300, 0.51)])
    assert near_chance(flat, 0.5)
    assert not near_chance(evals([(100, 0.5), (200, 0.5 + NEAR_CHANCE_MARGIN)]), 0.5)
    assert not near_chance(evals([(100, 0.45)]), 0.1)  # 0.45 has left a chance of 0.1 (not 5x of it)


def test_near_chance_allows_an_evaluations_noise():
    """Scored on 256 answers, a yes/no guesser's accuracy has a standard error of 0.031: 0.58 is noise
    there (three errors: 0.594), but not on 10,000 answers (the 0.05 margin then decides)."""
    def at(accuracy, scored):
        return [{"step": 100, "accuracy": accuracy, "scored": scored}]

    assert near_chance(at(0.58, 256), 0.5) and not near_chance(at(0.60, 256), 0.5)
    assert not near_chance(at(0.58, 10_000), 0.5)
    assert not near_chance(at(0.5, 256), 1.0) and not near_chance(at(0.5, 256), 0.0)  # no chance to leave
