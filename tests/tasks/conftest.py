import pytest

from longrecall.config import TrainConfig
from longrecall.train import train


def _learn(config: TrainConfig) -> tuple[dict, float, float]:
    """Train ``config`` quietly; return the metrics and the mean loss of the first and last 10 steps."""
    metrics = train(config, progress=False)
    history = metrics["history"]
    first = sum(h["loss"] for h in history[:10]) / len(history[:10])
    last = sum(h["loss"] for h in history[-10:]) / len(history[-10:])
    return metrics, first, last


@pytest.fixture
def learn():
    """The learning-above-chance harness every task's test uses: ``metrics, first, last = learn(config)``."""
    return _learn
