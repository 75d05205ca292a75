"""Memory-token models (RMT, Memformer): carried-state rules, memory across segments, training and configs."""

import pytest
import torch

from longrecall.arena.ids import run_id
from longrecall.arena.spec import load_spec
from longrecall.config import ConfigError, TrainConfig
from longrecall.models import MODELS, Memformer, RecurrentMemoryTransformer, SegmentMemoryState
from longrecall.train import make_model, segmented_backward, train
from longrecall.validation import ArgumentError

WRAPPERS = [RecurrentMemoryTransformer, Memformer]
S, M, D, V = 5, 3, 16, 32  # segment length, memory vectors, width, vocabulary


def build(cls, layers=("attention", "attention"), seed=0):
    torch.manual_seed(seed)
    model = cls(V, D, list(layers), segment_len=S, num_memory=M, short_conv=4, mixer_kwargs={"n_heads": 2})
    return model.double()


def tokens(T=17, B=2, seed=1):
    return torch.randint(V, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("cls", WRAPPERS)
@pytest.mark.parametrize("splits", [(7, 5, 5), (1, 16), (5, 5, 5, 2), (17,)])
def test_any_split_equals_one_call(cls, splits):
    model, x = build(cls), tokens()
    full, final = model(x)
    state, outs, t0 = None, [], 0
    for n in splits:
        out, state = model(x[:, t0:t0 + n], state)
        outs.append(out)
        t0 += n
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=0, atol=1e-12)
    torch.testing.assert_close(state.memory, final.memory, rtol=0, atol=1e-12)
    assert torch.equal(state.pending, final.pending) and final.pending.shape == (2, 17 % S)


@pytest.mark.parametrize("cls", WRAPPERS)
def test_step_equals_forward_and_generate_runs(cls):
    model, x = build(cls), tokens(12)
    full, _ = model(x)
    state, outs = model.init_state(2), []
    for t in range(12):
        logits, state = model.step(x[:, t], state)
        outs.append(logits)
    torch.testing.assert_close(torch.stack(outs, 1), full, rtol=0, atol=1e-12)
    new, _ = model.generate(x[:, :4], 6)
    assert new.shape == (2, 6)


@pytest.mark.parametrize("cls", WRAPPERS)
def test_segment_one_reaches_segment_three_only_through_the_memory(cls):
    """A changed token in segment 1 changes segment 3's outputs; handing segment 3 the unchanged run's
    memory restores them exactly (the backbone restarts every segment)."""
    model, x = build(cls), tokens(15)
    y = x.clone()
    y[:, 1] = (y[:, 1] + 1) % V
    ref, _ = model(x)
    changed, _ = model(y)
    assert (changed[:, 2 * S:] - ref[:, 2 * S:]).abs().max() > 1e-6
    _, memory_x = model(x[:, :2 * S])
    _, memory_y = model(y[:, :2 * S])
    assert (memory_x.memory - memory_y.memory).abs().max() > 1e-6
    restored, _ = model(y[:, 2 * S:], memory_x)
    torch.testing.assert_close(restored, ref[:, 2 * S:], rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", WRAPPERS)
def test_state_bytes_count_memory_and_pending_ids(cls):
    model = build(cls).float()
    _, state = model(tokens(12))
    assert isinstance(state, SegmentMemoryState)
    assert model.state_bytes(state) == 2 * M * D * 4 + 2 * (12 % S) * 8
    assert model.state_bytes_at(S * 3) == M * D * 4  # whole segments: the memory only


@pytest.mark.parametrize("cls", WRAPPERS)
def test_gradient_crosses_segments_and_truncation_cuts_it(cls):
    """The learned initial memory is read by segment 1 only: a loss in segment 3 reaches it through two
    memory writes, unless training truncates between segments."""
    model, x = build(cls), tokens(15)
    targets = torch.full_like(x, -100)
    targets[:, -1] = x[:, 0]  # scored in segment 3 only

    def init_grad(bptt):
        model.zero_grad(set_to_none=True)
        segmented_backward(model, x, targets, S, bptt)
        grad = model.memory_init.grad
        return 0.0 if grad is None else grad.abs().sum().item()

    assert init_grad(None) > 0
    assert init_grad(2) == 0  # segments 1-2 are one window with no scored position
    assert init_grad(3) > 0


@pytest.mark.parametrize("cls", WRAPPERS)
def test_untruncated_segment_training_equals_whole_sequence(cls):
    model, x = build(cls), tokens(15)
    targets = x.roll(-1, 1)
    targets[:, -1] = -100
    model.zero_grad(set_to_none=True)
    model.loss(x, targets)[0].backward()
    whole = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    segmented_backward(model, x, targets, S, None)
    for a, b in zip(whole, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_kv_policies_are_refused():
    import longrecall.policies  # noqa: F401  (registers them)
    from longrecall.registry import POLICIES

    model = build(RecurrentMemoryTransformer)
    with pytest.raises(ValueError, match="restarts every segment"):
        model.set_kv_policy(POLICIES.get("streaming")())
    assert model.set_kv_policy(None) == []


def test_bad_arguments_name_the_argument():
    with pytest.raises(ArgumentError, match="segment_len"):
        RecurrentMemoryTransformer(V, D, segment_len=0)
    with pytest.raises(ArgumentError, match="n_heads"):
        Memformer(V, D, n_heads=5)


# -- configs, specs, training ----------------------------------------------------------------------

def test_config_model_keys_are_checked():
    with pytest.raises(ConfigError, match="model"):
        TrainConfig(model="rnn")
    with pytest.raises(ConfigError, match="model_kwargs.window"):
        TrainConfig(model="rmt", model_kwargs={"window": 4})
    with pytest.raises(ConfigError, match="model_kwargs.segment_len"):
        TrainConfig(model="rmt", model_kwargs={"segment_len": 0})
    with pytest.raises(ConfigError, match="model_kwargs.n_heads"):
        TrainConfig(model="lm", model_kwargs={"n_heads": 2})
    assert set(MODELS) == {"lm", "rmt", "memformer"}


def test_default_model_keeps_run_ids():
    plain = TrainConfig().to_dict()
    without = {k: v for k, v in plain.items() if k not in ("model", "model_kwargs")}
    assert run_id(TrainConfig()) == run_id(without)
    assert run_id(TrainConfig(model="rmt")) != run_id(TrainConfig())


def test_make_model_builds_the_named_wrapper():
    config = TrainConfig(model="memformer", model_kwargs={"segment_len": 8, "num_memory": 2, "n_heads": 2})
    model = make_model(config, 64)
    assert isinstance(model, Memformer) and model.segment_len == 8 and model.num_memory == 2


def test_spec_mixer_entry_names_a_model():
    spec = load_spec({"name": "m", "mixers": ["attention", {"name": "attention", "model": "rmt",
                                                            "model_kwargs": {"segment_len": 16}}],
                      "tasks": ["passkey"], "lengths": [64], "widths": [32], "train": {"steps": 10}})
    runs = spec.expand()
    assert [r.labels["mixer"] for r in runs] == ["attention", "rmt(attention)"]
    assert runs[1].config.model == "rmt" and runs[1].config.model_kwargs == {"segment_len": 16}


def test_train_runs_rmt_across_segments(tmp_path):
    config = TrainConfig(model="rmt", model_kwargs={"segment_len": 16, "num_memory": 4}, layers=["attention"],
                         d_model=32, task="mqar", task_kwargs={"vocab_size": 64, "seq_len": 32, "num_kv_pairs": 2},
                         steps=6, batch_size=4, eval_every=3, eval_examples=8, segment_len=16, bptt_segments=1,
                         threads=1, out_dir=str(tmp_path))
    metrics = train(config, progress=False, log=lambda *a: None)
    assert metrics["steps"] == 6 and len(metrics["evals"]) == 2
