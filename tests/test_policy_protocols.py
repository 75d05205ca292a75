"""The four KV-cache evaluation protocols (policy_protocols): each against its definition written out
as plain model calls, with and without a policy."""

import pytest
import torch

import longrecall.policies  # noqa: F401  (registers the policies)
from longrecall.evaluate import evaluate_policy
from longrecall.models import LanguageModel
from longrecall.policy_protocols import STORED_NAMES, question_spans
from longrecall.registry import POLICIES
from longrecall.tasks.base import Batch
from longrecall.tasks.mqar import MQAR
from longrecall.validation import ArgumentError

T = 32


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = LanguageModel(32, 32, ["attention", "attention"], short_conv=4).double().eval()
    batch = MQAR(vocab_size=32, seq_len=T, num_kv_pairs=4).build(6, 3)
    return model, batch


def first_scored(batch, i):
    return int((batch.targets[i] != -100).float().argmax())


def correct_count(out):
    return round(out["accuracy"] * out["scored"])


def check_against(out, logits_at, batch):
    """``out`` scores what example i's answer at t reads from ``logits_at(i, t)``: the same correct
    answers and the same summed loss (float32 cross-entropy, as evaluate_policy computes it)."""
    correct, loss = 0, 0.0
    for i in range(len(batch)):
        for t in torch.nonzero(batch.targets[i] != -100).flatten().tolist():
            logits = logits_at(i, t)
            correct += int(logits.argmax() == batch.targets[i, t])
            loss += torch.nn.functional.cross_entropy(logits.float()[None], batch.targets[i, t][None]).item()
    assert correct_count(out) == correct
    assert out["loss"] * out["scored"] == pytest.approx(loss, rel=1e-5)


def test_question_spans_group_consecutive_scored_positions():
    scored = torch.zeros(12, dtype=torch.bool)
    scored[[4, 7, 8, 9, 11]] = True
    assert question_spans(scored, 4) == [(4, 4), (5, 9), (10, 11)]


def test_bad_protocol_names_the_argument(setup):
    model, batch = setup
    with pytest.raises(ArgumentError, match="protocol"):
        evaluate_policy(model, batch, None, protocol="lazy")


def test_aware_asks_the_question_again_after_the_prompt(setup):
    """Full cache: ``aware`` equals one forward over context + first question + the query region again."""
    model, batch = setup
    out = evaluate_policy(model, batch, None, protocol="aware")
    cache = {}

    def logits_at(i, t):
        p0 = first_scored(batch, i)
        if i not in cache:
            x = batch.inputs[i:i + 1]
            cache[i] = model(torch.cat([x[:, :p0 + 1], x[:, p0:]], dim=1))[0][0]
        return cache[i][p0 + 1 + (t - p0)]

    check_against(out, logits_at, batch)
    assert out["protocol"] == STORED_NAMES["aware"]


def test_decode_reads_the_questions_after_generated_tokens(setup):
    model, batch = setup
    n = 5
    out = evaluate_policy(model, batch, None, protocol="decode", decode_tokens=n)
    cache = {}

    def logits_at(i, t):
        p0 = first_scored(batch, i)
        if i not in cache:
            x = batch.inputs[i:i + 1]
            generated, _ = model.generate(x[:, :p0], n)
            cache[i] = model(torch.cat([x[:, :p0], generated, x[:, p0:]], dim=1))[0][0]
        return cache[i][n + t]

    check_against(out, logits_at, batch)
    zero = evaluate_policy(model, batch, None, protocol="decode", decode_tokens=0)
    agnostic = evaluate_policy(model, batch, None)
    assert correct_count(zero) == correct_count(agnostic) and zero["loss"] == pytest.approx(agnostic["loss"], rel=1e-6)


def test_reuse_answers_each_question_from_the_context_alone(setup):
    """Full cache: question j's answer equals a forward over the context and question j only."""
    model, batch = setup
    out = evaluate_policy(model, batch, None, protocol="reuse")

    def logits_at(i, t):
        p0 = first_scored(batch, i)
        x = batch.inputs[i:i + 1]
        span = next(s for s in question_spans(batch.targets[i] != -100, p0) if s[0] <= t <= s[1])
        logits = model(torch.cat([x[:, :p0], x[:, span[0]:t + 1]], dim=1))[0][0]
        return logits[-1]

    check_against(out, logits_at, batch)


@pytest.mark.parametrize("mode", ["step", "prefill"])
def test_protocols_under_a_policy_match_their_definition(setup, mode):
    """With an evicting policy the definitions hold through the step path: ``aware`` equals the
    agnostic protocol on the sequence with the first question repeated after the prompt."""
    model, batch = setup
    policy = POLICIES.get("h2o")(budget=6, mode=mode)
    aware = evaluate_policy(model, batch, policy, protocol="aware")
    total, loss = 0, 0.0
    for i in range(len(batch)):
        p0 = first_scored(batch, i)
        row = batch[i:i + 1]
        inputs = torch.cat([row.inputs[:, :p0 + 1], row.inputs[:, p0:]], dim=1)
        targets = torch.cat([torch.full_like(row.inputs[:, :p0 + 1], -100), row.targets[:, p0:]], dim=1)
        repeated = Batch(inputs, targets, torch.cat([torch.full_like(inputs[:, :p0 + 1], -1),
                                                     row.distance[:, p0:]], dim=1))
        # agnostic compresses [0, p0 + 1) (the first scored position is now p0 + 1): the aware prompt
        alone = evaluate_policy(model, repeated, policy, context_len=T)
        total, loss = total + correct_count(alone), loss + alone["loss"] * alone["scored"]
    assert correct_count(aware) == total
    assert aware["loss"] * aware["scored"] == pytest.approx(loss, rel=1e-6)
    assert aware["state_bytes"] > 0 and aware["examples"] == len(batch)


def test_decode_keeps_step_mode_within_budget_and_lets_prefill_grow(setup):
    model, batch = setup
    step = evaluate_policy(model, batch, POLICIES.get("window")(budget=4), protocol="decode", decode_tokens=8)
    grow = evaluate_policy(model, batch, POLICIES.get("window")(budget=4, mode="prefill"), protocol="decode",
                           decode_tokens=8)
    assert step["state_bytes_end"] == step["state_bytes"]  # evicting throughout: 4 tokens per head
    assert grow["state_bytes_end"] > grow["state_bytes"]  # compressed once, then every token appended
