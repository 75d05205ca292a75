"""Invalid hyperparameters fail at construction with the argument named."""

import pytest

from longrecall.registry import MIXERS

BAD = [
    ("attention", dict(n_heads=3), "n_heads"),
    ("attention", dict(n_heads=0), "n_heads"),
    ("attention", dict(n_heads=16), "even"),  # head width 1 cannot carry rotary pairs
    ("sliding_window", dict(window=0), "window"),
    ("sliding_window", dict(window=-3), "window"),
    ("sliding_window", dict(window=2.5), "window"),
    ("sliding_window", dict(block_size=0), "block_size"),
]


@pytest.mark.parametrize("name,kwargs,match", BAD)
def test_bad_hyperparameters(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        MIXERS.get(name)(16, **kwargs)


@pytest.mark.parametrize("name", MIXERS.names())
@pytest.mark.parametrize("d_model", [0, -4])
def test_non_positive_width_rejected(name, d_model):
    with pytest.raises(ValueError, match="d_model"):
        MIXERS.get(name)(d_model)
