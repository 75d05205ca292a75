"""Every task's chance accuracy is one over the number of answers it really asks for: the distinct
targets of its scored positions over many examples (a uniform guess among them scores exactly that)."""

import pytest

import longrecall.tasks  # noqa: F401 - registers every task
from longrecall.registry import TASKS

SMALL = {"mqar": {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 8}}


@pytest.mark.parametrize("name", TASKS.names())
def test_chance_is_one_over_the_answers_asked(name):
    task = TASKS.get(name)(**SMALL.get(name, {}))
    batch = task.build(1024, 0)
    answers = batch.targets[batch.targets != -100].unique()
    assert task.chance_accuracy() == pytest.approx(1 / len(answers))
