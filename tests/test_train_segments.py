"""Training across segments (TrainConfig.segment_len, bptt_segments): gradients against whole-sequence training."""

import pytest
import torch

from longrecall.arena.ids import run_id
from longrecall.config import ConfigError, TrainConfig
from longrecall.models import LanguageModel
from longrecall.protocol import state_detach
from longrecall.tasks.mqar import MQAR
from longrecall.train import _saved_config, segmented_backward, train

LAYERS = ["attention", "gla"]  # a growing KV cache and a fixed-size matrix memory


def model_and_batch(seed: int = 0, short_conv: int = 0):
    torch.manual_seed(seed)
    model = LanguageModel(64, 32, LAYERS, short_conv=short_conv).double()
    batch = MQAR(vocab_size=64, seq_len=32, num_kv_pairs=4).build(3, seed)
    return model, batch


def whole(model, batch):
    model.zero_grad(set_to_none=True)
    loss, logits, labels = model.loss(batch.inputs, batch.targets)
    loss.backward()
    return loss.detach(), logits.detach(), labels, [p.grad.clone() for p in model.parameters()]


def segmented(model, batch, segment_len, bptt=None):
    model.zero_grad(set_to_none=True)
    loss, logits, labels = segmented_backward(model, batch.inputs, batch.targets, segment_len, bptt)
    return loss, logits, labels, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("segment_len", [32, 7, 16, 1])
@pytest.mark.parametrize("short_conv", [0, 4])
def test_untruncated_segments_equal_whole_sequence_training(segment_len, short_conv):
    model, batch = model_and_batch(short_conv=short_conv)
    ref = whole(model, batch)
    got = segmented(model, batch, segment_len)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-9, atol=1e-10)  # logits in the whole sequence's order
    assert torch.equal(got[2], ref[2])
    # the block norm before a short conv runs in float32 (RMSNorm upcast), so its rounding differs by segment
    tol = {"rtol": 1e-8, "atol": 1e-12} if short_conv == 0 else {"rtol": 1e-6, "atol": 1e-7}
    for g, r in zip(got[3], ref[3], strict=True):
        torch.testing.assert_close(g, r, **tol)


def test_truncation_detaches_the_carried_state_at_each_boundary():
    """bptt_segments=1 over two segments: the second segment's loss sends no gradient into the first."""
    model, batch = model_and_batch(1)
    x, y = batch.inputs, batch.targets
    total = int((y != -100).sum())
    model.zero_grad(set_to_none=True)
    (first, _, _), state = model.loss_sum(x[:, :16], y[:, :16])
    (first / total).backward()
    (second, _, _), _ = model.loss_sum(x[:, 16:], y[:, 16:], state_detach(state))
    (second / total).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    got = segmented(model, batch, 16, bptt=1)
    for g, e in zip(got[3], expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-8, atol=1e-10)
    untruncated = segmented(model, batch, 16)
    assert any(not torch.allclose(a, b) for a, b in zip(got[3], untruncated[3], strict=True))
    torch.testing.assert_close(got[0], untruncated[0])  # the loss is the same; only its gradient is cut


def test_bptt_covering_every_segment_is_no_truncation():
    model, batch = model_and_batch(2)
    a = segmented(model, batch, 8, bptt=4)  # 4 segments, one window
    b = segmented(model, batch, 8)
    for g, r in zip(a[3], b[3], strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=0)


@pytest.mark.parametrize("kwargs, arg", [
    ({"segment_len": 0}, "segment_len"),
    ({"segment_len": 2.5}, "segment_len"),
    ({"bptt_segments": 2}, "bptt_segments"),
    ({"segment_len": 8, "bptt_segments": 0}, "bptt_segments"),
    ({"segment_len": 8, "compile": True}, "compile"),
])
def test_bad_segment_settings_name_the_key(kwargs, arg):
    with pytest.raises(ConfigError, match=arg):
        TrainConfig(**kwargs)


def test_run_ids_and_checkpoints_from_before_the_keys_are_unchanged():
    config = TrainConfig(steps=10)
    data = config.to_dict()
    older = {k: v for k, v in data.items() if k not in ("segment_len", "bptt_segments")}
    assert run_id(older) == run_id(data)
    assert _saved_config({"config": older}) == data  # a checkpoint written before them still resumes


def test_train_across_segments_learns_and_records_its_steps(tmp_path):
    config = TrainConfig(layers=["gla", "gla"], d_model=32, task="mqar",
                         task_kwargs={"vocab_size": 32, "seq_len": 32, "num_kv_pairs": 2}, steps=30, batch_size=16,
                         lr=3e-3, warmup_steps=5, eval_every=30, eval_examples=64, segment_len=8, bptt_segments=2,
                         threads=1, out_dir=str(tmp_path / "run"))
    metrics = train(config, progress=False, log=lambda *_: None)
    losses = [h["loss"] for h in metrics["history"]]
    assert len(losses) == 30 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
