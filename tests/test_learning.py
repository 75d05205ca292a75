"""Learning on the CPU-scale MQAR configuration (slow: minutes; run with `make test-slow`).

MQAR accuracy jumps abruptly, so these assert what is robust to the seed: a clear loss drop and
accuracy far above chance, plus the documented CPU-scale target for attention.
"""

import pytest

from longrecall.config import TrainConfig, load_config
from longrecall.train import train

pytestmark = pytest.mark.slow


def test_cpu_scale_attention_config_learns_mqar():
    config = load_config(TrainConfig, "configs/mqar_cpu.toml", ["--early_stop_accuracy=0.95"])
    metrics = train(config, progress=False)
    assert metrics["final_eval"]["accuracy"] >= 0.95  # chance is 1/256 values


@pytest.mark.parametrize("mixer", ["mamba", "s4d", "sliding_window"])
def test_other_memories_reduce_the_loss(mixer):
    config = load_config(TrainConfig, "configs/mqar_cpu.toml", ["--steps=300", "--eval_every=300"],
                         layers=[mixer, mixer])
    metrics = train(config, progress=False)
    history = metrics["history"]
    first = sum(h["loss"] for h in history[:10]) / 10
    last = sum(h["loss"] for h in history[-10:]) / 10
    assert last < first - 0.5
