"""Named hybrid architectures: their layer lists, bad arguments, and a hybrid's carried state."""

import pytest
import torch

from longrecall.models import LanguageModel
from longrecall.models.architectures import ARCHITECTURES, architecture
from longrecall.validation import ArgumentError


def test_layer_lists():
    assert architecture("samba", 4) == ["mamba", "sliding_window", "mamba", "sliding_window"]
    assert architecture("jamba", 8) == ["mamba"] * 4 + ["attention"] + ["mamba"] * 3
    assert architecture("jamba", 4, attention_every=4) == ["mamba", "mamba", "attention", "mamba"]
    assert architecture("jamba", 3, attention_every=3, recurrent="gla") == ["gla", "attention", "gla"]
    assert set(ARCHITECTURES) == {"samba", "jamba"}


@pytest.mark.parametrize("call, arg", [
    (lambda: architecture("samba", 3), "n_layers"),
    (lambda: architecture("samba", 0), "n_layers"),
    (lambda: architecture("jamba", 4), "attention_every"),
    (lambda: architecture("jamba", 4, attention_every=0), "attention_every"),
    (lambda: architecture("nope", 2), "name"),
])
def test_bad_arguments_name_the_argument(call, arg):
    with pytest.raises(ArgumentError) as info:
        call()
    assert info.value.arg == arg


@pytest.mark.parametrize("name, kwargs", [("samba", {}), ("jamba", {"attention_every": 2})])
def test_a_hybrid_carries_its_state_across_calls(name, kwargs):
    """Reading a sequence in two calls with the model state carried equals one call (every layer's state)."""
    torch.manual_seed(0)
    layers = architecture(name, 4, **kwargs)
    model = LanguageModel(32, 32, layers, short_conv=4, mixer_kwargs={"sliding_window": {"window": 8}}).double()
    tokens = torch.randint(0, 32, (2, 29))
    whole, _ = model.hidden(tokens)
    first, state = model.hidden(tokens[:, :11])
    second, _ = model.hidden(tokens[:, 11:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-9, atol=1e-9)
