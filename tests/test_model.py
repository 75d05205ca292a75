import pytest
import torch

from longrecall.models import LanguageModel

LAYERS = [["attention", "attention"], ["s4d", "sliding_window"], ["attention", "s4d"]]


@pytest.mark.parametrize("short_conv", [0, 4])
@pytest.mark.parametrize("layers", LAYERS, ids=["+".join(layers) for layers in LAYERS])
def test_step_and_generate_match_the_parallel_form(layers, short_conv):
    model = LanguageModel(50, 16, layers, mixer_kwargs={"sliding_window": {"window": 4}},
                          short_conv=short_conv).double()
    tokens = torch.randint(50, (2, 11))
    logits, state = model(tokens)
    stepped = model.init_state(2, dtype=torch.float64)
    for t in range(11):
        step_logits, stepped = model.step(tokens[:, t], stepped)
        torch.testing.assert_close(step_logits, logits[:, t], atol=1e-9, rtol=1e-7)
    assert model.state_bytes(stepped) == model.state_bytes(state)
    # chunked prefill carries every state, short-conv buffers included
    first, mid = model(tokens[:, :4])
    second, _ = model(tokens[:, 4:], mid)
    torch.testing.assert_close(torch.cat([first, second], 1), logits, atol=1e-9, rtol=1e-7)

    generated, _ = model.generate(tokens[:, :5], 6)
    # greedy generation equals repeatedly running the parallel form on the growing prompt
    prompt = tokens[:, :5]
    for i in range(6):
        next_token = model(prompt)[0][:, -1].argmax(-1)
        assert torch.equal(next_token, generated[:, i])
        prompt = torch.cat([prompt, next_token[:, None]], 1)


def test_state_bytes_at_measures_growth():
    attention = LanguageModel(20, 16, ["attention"])
    s4d = LanguageModel(20, 16, ["s4d"])
    assert attention.state_bytes_at(64) > attention.state_bytes_at(32) > 0
    assert s4d.state_bytes_at(64) == s4d.state_bytes_at(32) > 0


def test_loss_uses_only_scored_positions():
    model = LanguageModel(30, 16, ["attention"])
    tokens = torch.randint(30, (2, 8))
    targets = torch.full((2, 8), -100)
    targets[0, 3], targets[1, 7] = 5, 9
    loss, logits, labels = model.loss(tokens, targets)
    full, _ = model(tokens)
    expected = torch.nn.functional.cross_entropy(torch.stack([full[0, 3], full[1, 7]]), torch.tensor([5, 9]))
    torch.testing.assert_close(loss, expected)
    assert logits.shape == (2, 30)
    with pytest.raises(ValueError, match="targets"):
        model.loss(tokens, torch.full((2, 8), -100))


def test_tied_embeddings_share_weights():
    model = LanguageModel(30, 16, ["attention"], tie_embeddings=True)
    assert model.head.weight is model.embedding.weight


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(vocab_size=0, d_model=16, layers=["attention"]), "vocab_size"),
        (dict(vocab_size=10, d_model=-1, layers=["attention"]), "d_model"),
        (dict(vocab_size=10, d_model=16, layers=[]), "layers"),
        (dict(vocab_size=10, d_model=16, layers="attention"), "layers"),
        (dict(vocab_size=10, d_model=16, layers=["atention"]), "Did you mean"),
        (dict(vocab_size=10, d_model=16, layers=["attention"], mixer_kwargs={"n_heads": 3}), "n_heads"),
        (dict(vocab_size=10, d_model=16, layers=["attention"], mixer_kwargs={"heads": 2}), "mixer_kwargs"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises((ValueError, KeyError, TypeError), match=match):
        LanguageModel(**kwargs)


def test_bad_token_input():
    model = LanguageModel(10, 16, ["attention"])
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.randn(2, 5))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.randint(10, (5,)))
