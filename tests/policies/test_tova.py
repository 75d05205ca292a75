"""``tova``: each step evicts exactly the argmin of the current query's head-averaged attention."""

import math

import torch

from longrecall.policies.base import kept_positions
from longrecall.policies.tova import TOVA

from policy_helpers import inputs, make_attention


def test_evicts_the_argmin_of_head_averaged_attention():
    T, budget = 14, 5
    x = inputs(2, T, seed=11)
    mixer = make_attention(TOVA(budget=budget))
    state = mixer.init_state(2, dtype=torch.float64)
    evictions = 0
    for t in range(T):
        with torch.no_grad():
            q, k, _, _ = mixer.project(x[:, t : t + 1], state.length)
        keys = torch.cat([state.k, k], dim=2)  # cache + the new token
        positions = torch.cat([state.pos, torch.full((2, 2, 1), t, dtype=torch.int32)], dim=2)
        probs = torch.softmax((q @ keys.transpose(-1, -2))[:, :, 0] / math.sqrt(k.shape[-1]), dim=-1)  # (B, H, S+1)
        evicted = positions[:, 0].gather(1, probs.mean(1).argmin(-1, keepdim=True))[:, 0]  # (B,)
        before = [kept_positions(state, b, 0) + [t] for b in range(2)]
        _, state = mixer.step(x[:, t], state)
        for b in range(2):
            after = kept_positions(state, b, 0)
            if len(before[b]) > budget:
                evictions += 1
                assert after == [p for p in before[b] if p != int(evicted[b])], f"step {t}, row {b}"
            else:
                assert after == before[b]
            assert all(kept_positions(state, b, h) == after for h in range(2)), "one selection shared by the heads"
    assert evictions == 2 * (T - budget)


def test_prefill_mode_uses_the_last_prompt_query():
    x = inputs(1, 10, seed=12)
    mixer = make_attention(TOVA(budget=4, mode="prefill"))
    _, state = mixer(x)
    with torch.no_grad():
        q, k, _, _ = mixer.project(x, torch.zeros(1, dtype=torch.int64))
    probs = torch.softmax((q[:, :, -1:] @ k.transpose(-1, -2))[:, :, 0] / math.sqrt(k.shape[-1]), dim=-1)  # (1, H, 10)
    want = sorted(probs.mean(1)[0].argsort(descending=True)[:4].tolist())
    assert kept_positions(state) == want == kept_positions(state, 0, 1)
