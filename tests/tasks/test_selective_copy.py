import pytest
import torch

import longrecall.tasks.selective_copy  # noqa: F401 - registers "selective_copy" before tasks/__init__ lists it
from longrecall.config import TrainConfig
from longrecall.registry import TASKS
from longrecall.tasks.base import IGNORE_INDEX
from longrecall.tasks.selective_copy import CPU_SCALE, MAMBA_SCALE, NOISE, SelectiveCopy

SMALL = dict(alphabet_size=8, n_tokens=4, seq_len=32)


def test_registered_and_config():
    assert TASKS.get("selective_copy") is SelectiveCopy
    assert SelectiveCopy(**SMALL).config() == {"task": "selective_copy", "version": 1, **SMALL, "teacher_forcing": True}


@pytest.mark.parametrize("teacher_forcing", [True, False])
@pytest.mark.parametrize("config", [SMALL, CPU_SCALE, MAMBA_SCALE, dict(alphabet_size=1, n_tokens=3, seq_len=6)])
def test_structure_targets_and_distances(config, teacher_forcing):
    task = SelectiveCopy(**config, teacher_forcing=teacher_forcing)
    T, M, marker = task.seq_len, task.n_tokens, task.alphabet_size + 1
    P = T - M
    batch = task.build(8, 0)
    assert batch.inputs.shape == batch.targets.shape == batch.distance.shape == (8, T)
    assert task.vocab_size == task.alphabet_size + 2 and int(batch.inputs.max()) < task.vocab_size
    for row in range(8):
        x, y, d = batch.inputs[row].tolist(), batch.targets[row].tolist(), batch.distance[row].tolist()
        # recover the data tokens from the prefix: everything that is not noise, in order
        source = [t for t in range(P) if x[t] != NOISE]
        data = [x[t] for t in source]
        assert len(source) == M and all(1 <= v <= task.alphabet_size for v in data)
        assert x[:P].count(NOISE) == T - 2 * M
        assert x[P] == marker and marker not in x[:P]
        assert x[P + 1 :] == (data[:-1] if teacher_forcing else [marker] * (M - 1))
        assert [t for t in range(T) if y[t] != IGNORE_INDEX] == list(range(P, T))
        for j in range(M):
            assert y[P + j] == data[j]  # the j-th data token, in order
            assert d[P + j] == P + j - source[j]  # scored position minus its source position
        assert all(d[t] == -1 for t in range(P))


def test_teacher_forcing_changes_only_the_answer_inputs():
    forced = SelectiveCopy(**SMALL).build(8, 5)
    plain = SelectiveCopy(**SMALL, teacher_forcing=False).build(8, 5)
    P = SMALL["seq_len"] - SMALL["n_tokens"]
    assert torch.equal(forced.inputs[:, : P + 1], plain.inputs[:, : P + 1])
    assert torch.equal(forced.targets, plain.targets) and torch.equal(forced.distance, plain.distance)


def test_worked_example_layout():
    task = SelectiveCopy(alphabet_size=3, n_tokens=3, seq_len=10)
    batch = task.build(1, 0)
    x, y = batch.inputs[0].tolist(), batch.targets[0].tolist()
    assert task.vocab_size == 5 and x[7] == 4 and x[:7].count(0) == 4
    assert y[:7] == [-100] * 7 and x[8:] == y[7:9]


def test_positions_spread_and_data_cover_the_alphabet():
    task = SelectiveCopy(alphabet_size=6, n_tokens=4, seq_len=104)
    batch = task.build(256, 0)
    prefix = batch.inputs[:, :100]
    positions = (prefix != NOISE).nonzero()[:, 1]
    assert positions.min() <= 2 and positions.max() >= 97  # anywhere in the prefix
    assert abs(positions.float().mean().item() - 49.5) < 3
    assert set(prefix[prefix != NOISE].unique().tolist()) == set(range(1, 7))
    scored = batch.targets != IGNORE_INDEX
    assert batch.distance[scored].min() >= 1 and batch.distance[scored].max() <= 103


def test_mamba_scale_vocabulary():
    task = SelectiveCopy(**MAMBA_SCALE)
    assert task.vocab_size == 16 and task.seq_len == 4128 and task.seq_len - 2 * task.n_tokens == 4096


def test_slices():
    batch = SelectiveCopy(**SMALL).build(4, 0)
    assert batch.slices["n_tokens"].tolist() == [4] * 4 and batch.slices["seq_len"].tolist() == [32] * 4


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(alphabet_size=0), "alphabet_size"),
        (dict(alphabet_size=2.0), "alphabet_size"),
        (dict(alphabet_size=True), "alphabet_size"),
        (dict(n_tokens=0), "n_tokens"),
        (dict(n_tokens=17), "seq_len"),
        (dict(seq_len=0), "seq_len"),
        (dict(seq_len=7), "seq_len"),
        (dict(teacher_forcing=1), "teacher_forcing"),
    ],
)
def test_bad_parameters_named(kwargs, name):
    with pytest.raises(ValueError, match=name):
        SelectiveCopy(**{**SMALL, **kwargs})


def test_attention_learns_selective_copying(learn):
    # chance is 1/8 per data token; seeds 0-2 reached 0.88-0.93 after 300 steps (about 7 s)
    metrics, first, last = learn(TrainConfig(task="selective_copy", task_kwargs=SMALL,
                                layers=["attention", "attention"], d_model=32, short_conv=4, steps=300, batch_size=32,
                                eval_every=300, eval_examples=256, lr=3e-3, warmup_steps=20, threads=1))
    assert metrics["final_eval"]["accuracy"] > 0.5
    assert last < first - 1.0  # from about ln(10) = 2.3
