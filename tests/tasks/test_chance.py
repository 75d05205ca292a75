"""Every task's chance accuracy is the best guess that does not read the input: one over the number of
answers it really asks for (the distinct targets of its scored positions over many examples) where the
answers are uniform, the most frequent answer's share where they are not (ListOps)."""

import pytest

import longrecall.tasks  # noqa: F401 - registers every task
from longrecall.registry import TASKS

SMALL = {"mqar": {"vocab_size": 64, "seq_len": 64, "num_kv_pairs": 8}}


@pytest.mark.parametrize("name", TASKS.names())
def test_chance_is_one_over_the_answers_asked(name):
    task = TASKS.get(name)(**SMALL.get(name, {}))
    batch = task.build(1024, 0)
    answers = batch.targets[batch.targets != -100]
    if name == "listops":  # skewed values: the most frequent one's share, measured on another sample
        share = answers.bincount().max().item() / len(answers)
        assert task.chance_accuracy() == pytest.approx(share, abs=0.04) and task.chance_accuracy() > 0.1
    else:
        assert task.chance_accuracy() == pytest.approx(1 / len(answers.unique()))
