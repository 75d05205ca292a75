"""Every registered KV-cache policy on a tiny random Hugging Face Llama (longrecall.adapters.hf)."""

import dataclasses
import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers", reason="the hf adapter needs the `hf` extra (transformers is not installed)")

from transformers import LlamaConfig, LlamaForCausalLM
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from longrecall.adapters import hf
from longrecall.adapters.hf import ATTN_IMPLEMENTATION, LongrecallCache, apply_policy, kv_policy
from longrecall.mixers.attention import Attention
from longrecall.policies.base import kept_positions
from longrecall.registry import POLICIES

from policy_helpers import inputs, make_attention, run_steps

NAMES = POLICIES.names()
BOUNDED = [n for n in NAMES if POLICIES.get(n).bounded]
MODES = ["step", "prefill"]
N_LAYERS, N_HEADS, HEAD_DIM = 2, 4, 16


def make_model(n_kv_heads: int = 2) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS,
                         num_attention_heads=N_HEADS, num_key_value_heads=n_kv_heads, head_dim=HEAD_DIM,
                         max_position_embeddings=256)
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config).float().eval()


def prompt(batch=2, T=40, seed=1) -> torch.Tensor:
    return torch.randint(0, 64, (batch, T), generator=torch.Generator().manual_seed(seed))


def make_policy(name, budget=None, mode="step"):
    try:
        return POLICIES.get(name)(budget=budget, mode=mode)
    except ValueError as err:  # a policy that does not take this budget / mode (e.g. `full` with a budget)
        pytest.skip(f"{name} rejects budget={budget!r}, mode={mode!r}: {err}")


def greedy(model, ids, cache=None, n=4):
    kwargs = {} if cache is None else {"cache": cache}
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=0, **kwargs)
    return out.sequences, torch.stack(out.logits, 1)


@pytest.fixture(scope="module")
def gqa():
    model = make_model(2)
    ids = prompt()
    with torch.no_grad():
        return model, ids, model(ids).logits, greedy(model, ids)


@pytest.fixture
def record(monkeypatch):
    """Wrap the "longrecall" attention: per layer, each call's queries and new keys / values."""
    calls = {}

    def spy(module, query, key, value, *args, **kwargs):
        T = query.shape[2]
        calls.setdefault(module.layer_idx, []).append((query.clone(), key[:, :, -T:].clone(), value[:, :, -T:].clone()))
        return hf.longrecall_attention(module, query, key, value, *args, **kwargs)

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._global_mapping, ATTN_IMPLEMENTATION, spy)
    return calls


# ----------------------------------------------------------------------------- 1. unlimited = uncompressed


def exact_without_budget(name, mode, T, n_new=4) -> bool:
    """Whether our own mixer, at budget=None, is plain attention for the calls the HF test makes: a
    prompt of T (whole, and in two chunks), then n_new steps.  ThinK and KIVI compress their
    representation even without a budget once the sequence outgrows their exact window."""
    x = inputs(1, T + n_new, d_model=32)
    plain = make_attention(d_model=32, n_heads=2)
    mixer = make_attention(make_policy(name, None, mode), d_model=32, n_heads=2)

    def calls(m):
        y1, s1 = m(x[:, :T])
        y2, s2 = m(x[:, : T // 2])
        y3, s2 = m(x[:, T // 2 : T], s2)
        return torch.cat([y1, y2, y3, run_steps(m, x[:, T:], s1)[0], run_steps(m, x[:, T:], s2)[0]], 1)

    with torch.no_grad():
        return torch.allclose(calls(mixer), calls(plain), atol=1e-10)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_unlimited_budget_equals_the_uncompressed_model(name, mode, gqa):
    model, ids, ref_logits, (ref_seq, ref_gen) = gqa
    policy = make_policy(name, None, mode)
    if not exact_without_budget(name, mode, ids.shape[1] + 4):
        pytest.skip(f"{name} compresses without a budget (lossy by design): see the mixer comparison")
    with torch.no_grad(), kv_policy(model, policy) as new_cache:
        assert model.config._attn_implementation == ATTN_IMPLEMENTATION
        logits = model(ids, cache=new_cache()).logits
        cache = new_cache()  # a prompt in two chunks: the second call carries the cache
        chunked = torch.cat([model(ids[:, :25], cache=cache).logits, model(ids[:, 25:], cache=cache).logits], 1)
        seq, gen = greedy(model, ids, new_cache())
    assert model.config._attn_implementation == "sdpa"  # restored
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked, ref_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(gen, ref_gen, atol=1e-5, rtol=0)
    assert torch.equal(seq, ref_seq)
    assert cache.get_seq_length() == ids.shape[1] and cache.layers[0].state.pos.shape[2] == ids.shape[1]


# ----------------------------------------------------------------------------- 2. same kept tokens as our mixer


def run_hf(model, policy, ids, n_decode=3, with_logits=False):
    """The prompt, then n_decode greedy tokens one by one, through a LongrecallCache: the cache at the end
    (and each call's input ids and logits)."""
    calls = []
    with torch.no_grad(), kv_policy(model, policy) as new_cache:
        cache = new_cache()
        for _ in range(n_decode + 1):
            logits = model(ids, cache=cache).logits
            calls.append((ids, logits))
            ids = logits[:, -1:].argmax(-1)
    return (cache, calls) if with_logits else cache


def surprisal_of(calls):
    """Per call (B, T): -log p(x_t | x_<t) from the run's own logits; the first token gets log V."""
    out, previous = [], None
    for ids, logits in calls:
        first = (torch.full((ids.shape[0], 1), math.log(logits.shape[-1])) if previous is None
                 else -torch.log_softmax(previous[:, -1:], -1).gather(-1, ids[:, :1, None])[..., 0])
        later = -torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
        out.append(torch.cat([first, later], 1))
        previous = logits
    return out


def mixer_reference(policy, calls, layer, n_heads, pick=slice(None), surprisal=None):
    """Our `attention` mixer's policy cycle, fed the recorded rotated q, k, v of one HF layer (and, for
    surprisal policies, the model's surprisal, handed as LanguageModel does)."""
    q, k, v = (torch.cat([c[i] for c in calls], 2) for i in range(3))
    q = q[:, pick]  # query-free rules under GQA: any query per KV head
    mixer = Attention(n_heads * HEAD_DIM, n_heads=n_heads).float()

    def project(x, length):
        T, s = x.shape[1], int(length[0])
        return q[:, :, s : s + T], k[:, :, s : s + T], v[:, :, s : s + T], length[:, None] + torch.arange(T)

    def hand(state, i):
        return state if surprisal is None else policy.with_surprisal(state, surprisal[i])

    mixer.project = project
    B, D = q.shape[0], n_heads * HEAD_DIM
    # a surprisal policy's multi-token call evicts once, at its end (the adapter's documented rule)
    first = dataclasses.replace(policy, mode="prefill") if surprisal is not None else policy
    with torch.no_grad():
        mixer.set_policy(first, layer=layer, n_layers=N_LAYERS)
        _, state = mixer(torch.zeros(B, calls[0][0].shape[2], D), hand(mixer.init_state(B), 0))
        mixer.set_policy(policy, layer=layer, n_layers=N_LAYERS)
        for i in range(1, len(calls)):
            _, state = mixer.step(torch.zeros(B, D), hand(state, i))
    return state


def all_positions(state):
    B, H = state.pos.shape[:2]
    return [[kept_positions(state, b, h) for h in range(H)] for b in range(B)]


def finite_policy(name, mode, n_heads=N_HEADS):
    """The policy at the smallest finite budget it binds with (quest counts whole pages, infllm needs
    room for its units), else unlimited (full, think, kivi)."""
    cls = POLICIES.get(name)
    for budget in (16, 32, 48, None):
        try:
            policy = cls(budget=budget, mode=mode)
            for layer in range(N_LAYERS):
                policy.bind(n_heads=n_heads, layer=layer, n_layers=N_LAYERS)
            return policy
        except ValueError:
            continue
    pytest.skip(f"{name} binds with none of the tried budgets in mode {mode!r}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NAMES)
def test_the_cache_matches_the_mixer_mha(name, mode, record):
    """Every policy (window, streaming, h2o, tova, knorm, snapkv, ...) on an MHA model (Hq = Hkv): the HF
    cache holds what our attention mixer's cycle holds when fed the same rotated q, k, v."""
    model, policy = make_model(N_HEADS), finite_policy(name, mode)
    cache, calls = run_hf(model, policy, prompt(T=70), with_logits=True)
    surprisal = surprisal_of(calls) if getattr(policy, "needs_surprisal", False) else None
    for layer in range(N_LAYERS):
        ref = mixer_reference(policy, record[layer], layer, N_HEADS, surprisal=surprisal)
        got = cache.layers[layer].state
        assert all_positions(got) == all_positions(ref), f"layer {layer}"
        assert got.length.tolist() == [73, 73]
        if surprisal is not None and mode == "step":
            # the prompt attended under retrieval with its surprisal still unknown (NaN): compare what
            # is stored, the tokens and their surprisal
            torch.testing.assert_close(got.extra[0], ref.extra[0], atol=1e-5, rtol=0)
            continue
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)  # k, v, pos, length, statistics, aux


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["window", "streaming", "knorm"])
def test_query_free_rules_under_gqa_match_the_mixer(name, mode, record):
    model, policy = make_model(2), make_policy(name, 12, mode)
    cache = run_hf(model, policy, prompt(T=30))
    for layer in range(N_LAYERS):
        ref = mixer_reference(policy, record[layer], layer, 2, pick=slice(0, None, 2))
        assert all_positions(cache.layers[layer].state) == all_positions(ref), f"layer {layer}"


def gqa_reference(name, mode, q, k, budget):
    """Kept positions per KV head of one batch row, written out by hand: query head h*G+g reads KV head h,
    and attention-based scores are averaged over the G query heads of a group (the documented rule)."""
    Hq, T, K = q.shape
    Hkv = k.shape[0]
    G = Hq // Hkv
    recent = math.floor(budget * 0.5)
    kept = [[] for _ in range(Hkv)]
    acc = [dict() for _ in range(Hkv)]
    steps = [range(T)] if mode == "prefill" else [[t] for t in range(T)]
    for queries in steps:
        queries = list(queries)
        for h in range(Hkv):
            kept[h] += queries
            acc[h].update({t: 0.0 for t in queries})
        probs = []  # per query head (n_queries, n_kept), causal by position
        for hq in range(Hq):
            h = hq // G
            keys = torch.tensor(kept[h])
            scores = (q[hq, queries] @ k[h, keys].T) * K**-0.5
            scores = scores.masked_fill(keys[None, :] > torch.tensor(queries)[:, None], -math.inf)
            probs.append(torch.softmax(scores.double(), -1))
        length = queries[-1] + 1
        for h in range(Hkv):
            if name == "h2o":
                group = torch.stack(probs[h * G : (h + 1) * G]).mean(0).sum(0)  # group mean, summed over queries
                for j, t in enumerate(kept[h]):
                    acc[h][t] += float(group[j])
        if len(kept[0]) <= budget:
            continue
        for h in range(Hkv):
            if name == "h2o":
                protected = [t for t in kept[h] if t >= length - recent]
                others = sorted((t for t in kept[h] if t < length - recent), key=lambda t: -acc[h][t])
                keep = set(protected) | set(others[: budget - len(protected)])
            else:  # tova: the last query's attention averaged over every query head
                last = torch.stack([p[-1] for p in probs]).mean(0)
                order = sorted(range(len(kept[h])), key=lambda j: -float(last[j]))
                keep = {kept[h][j] for j in order[:budget]}
            kept[h] = [t for t in kept[h] if t in keep]
    return kept


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["h2o", "tova"])
def test_attention_scores_under_gqa_are_group_means(name, mode, record):
    model, policy = make_model(2), make_policy(name, 10, mode)
    run = run_hf(model, policy, prompt(batch=1, T=24), n_decode=0)
    for layer in range(N_LAYERS):
        q, k, _ = record[layer][0]
        expected = gqa_reference(name, mode, q[0], k[0], 10)
        got = [kept_positions(run.layers[layer].state, 0, h) for h in range(2)]
        assert got == expected, f"layer {layer}"


# ----------------------------------------------------------------------------- 3. the tensors really shrink


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", BOUNDED)
def test_cache_tensors_shrink_to_the_budget(name, mode):
    model, policy = make_model(2), make_policy(name, 32, mode)
    ids = prompt(batch=1, T=100)
    with torch.no_grad(), kv_policy(model, policy) as new_cache:
        full = LongrecallCache(model, POLICIES.get(name)(mode=mode))  # unlimited budget
        model(ids, cache=full)
        cache = new_cache()
        logits = model(ids, cache=cache).logits
        budgets = [layer.bound.budget for layer in cache.layers]  # 32, or the layer's share (pyramidkv)
        assert sum(budgets) <= 32 * N_LAYERS
        for layer, budget in zip(cache.layers, budgets, strict=True):
            assert layer.state.pos.shape[2] == budget
            for leaf in (layer.state.k, layer.state.v, layer.state.pos, *layer.state.extra):
                held = leaf.untyped_storage().nbytes()
                assert held == leaf.numel() * leaf.element_size(), "a view keeps evicted tokens alive"
        assert cache.state_bytes() < full.state_bytes()
        for step in range(1, 6):
            logits = model(logits[:, -1:].argmax(-1), cache=cache).logits
            for layer, budget in zip(cache.layers, budgets, strict=True):
                expected = budget if mode == "step" else budget + step  # prefill mode: decoding appends
                assert layer.state.pos.shape[2] == expected
                if mode == "prefill":
                    assert kept_positions(layer.state)[-step:] == list(range(100, 100 + step))
        assert cache.get_seq_length() == 105


def test_generate_respects_the_budget_and_ratio_budgets_resolve():
    model = make_model(2)
    ids = prompt(batch=1, T=100)
    with torch.no_grad(), kv_policy(model, POLICIES.get("h2o")(budget=0.25), context_len=100) as new_cache:
        cache = new_cache()
        seq, _ = greedy(model, ids, cache, n=6)
    assert seq.shape[1] == 106 and cache.get_seq_length() == 105
    assert all(layer.state.pos.shape[2] == 25 for layer in cache.layers)
    assert cache.resident_bytes() == cache.state_bytes() > 0


# ----------------------------------------------------------------------------- 4. batches


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["window", "streaming", "h2o", "tova", "knorm"])
def test_a_batch_of_two_equals_each_prompt_alone(name, mode):
    model, policy = make_model(2), make_policy(name, 16, mode)
    ids = prompt(batch=2, T=40, seed=3)
    with torch.no_grad(), kv_policy(model, policy) as new_cache:
        cache = new_cache()
        seq, gen = greedy(model, ids, cache)
        for row in range(2):
            alone = new_cache()
            seq_i, gen_i = greedy(model, ids[row : row + 1], alone)
            assert torch.equal(seq_i, seq[row : row + 1])
            torch.testing.assert_close(gen_i, gen[row : row + 1], atol=1e-5, rtol=0)
            for layer in range(N_LAYERS):
                assert cache.kept_positions(layer, row) == alone.kept_positions(layer, 0)


def test_beam_search_chunked_prefill_and_other_caches(gqa):
    """generate's batch operations (beams), chunked prefill, and the attention without a LongrecallCache."""
    model, ids, ref_logits, _ = gqa
    kwargs = dict(attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        beams = model.generate(ids, num_beams=3, **kwargs)
        chunked = model.generate(ids, prefill_chunk_size=16, **kwargs)
        with kv_policy(model, POLICIES.get("h2o")(budget=None)) as new_cache:
            assert torch.equal(model.generate(ids, num_beams=3, cache=new_cache(), **kwargs), beams)
            assert torch.equal(model.generate(ids, prefill_chunk_size=16, cache=new_cache(), **kwargs), chunked)
            torch.testing.assert_close(model(ids).logits, ref_logits, atol=1e-5, rtol=0)  # a DynamicCache: SDPA
            torch.testing.assert_close(model(ids, use_cache=False).logits, ref_logits, atol=1e-5, rtol=0)
        with kv_policy(model, POLICIES.get("h2o")(budget=12)) as new_cache:
            cache = new_cache()
            assert model.generate(ids, num_beams=3, cache=cache, **kwargs).shape == (2, ids.shape[1] + 4)
    assert cache.layers[0].state.pos.shape == (6, 2, 12)  # 2 prompts x 3 beams, 2 KV heads, the budget


# ----------------------------------------------------------------------------- 5. errors


@pytest.mark.parametrize("name", BOUNDED)
def test_invalid_budgets_raise_the_policy_error(name):
    model = make_model(2)
    cls = POLICIES.get(name)
    for bad in (0, -1, 1.5, "x"):
        with pytest.raises(ValueError, match="budget"):
            cls(budget=bad)
    with pytest.raises(ValueError, match="context_len"):
        apply_policy(model, cls(budget=0.5))  # a ratio needs the context length
    assert model.config._attn_implementation == "sdpa"  # nothing was changed
    cache = LongrecallCache(model, cls(budget=0.5), context_len=12)
    assert all(layer.bound.budget == cls(budget=6).bind(n_heads=2, layer=i, n_layers=N_LAYERS).budget
               for i, layer in enumerate(cache.layers))


def test_policy_specific_budget_errors():
    model = make_model(2)
    with pytest.raises(ValueError, match="n_sink"):
        apply_policy(model, POLICIES.get("streaming")(budget=2, n_sink=4))
    with pytest.raises(ValueError, match="recent"):
        LongrecallCache(model, POLICIES.get("h2o")(budget=4, recent=8))
    with pytest.raises(TypeError, match="Policy"):
        LongrecallCache(model, "h2o")


def test_padding_and_a_foreign_attention_are_refused():
    model = make_model(2)
    ids = prompt(batch=2, T=12)
    make = apply_policy(model, POLICIES.get("window")(budget=4))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad(), pytest.raises(NotImplementedError, match="padding"):
        model(ids, attention_mask=mask, cache=make())
    model.set_attn_implementation("sdpa")  # the cache's attention is not run: the next update says so
    cache = make()
    with torch.no_grad():
        model(ids, cache=cache)
        with pytest.raises(RuntimeError, match="longrecall"):
            model(ids[:, :1], cache=cache)
    config = make_model(2).config
    config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(NotImplementedError, match="full-attention"):
        LongrecallCache(config, POLICIES.get("window")(budget=4))


def test_longrecall_imports_without_transformers():
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import longrecall, longrecall.adapters\n"
        "try:\n    import longrecall.adapters.hf\nexcept ImportError as e:\n    print('hf:', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'longrecall[hf]'" in out.stdout


def test_byte_budget_on_a_hugging_face_model():
    """A byte budget per sequence buys floor(bytes / per-token bytes over the layers) tokens per layer and
    head (2 KV heads of 16 float32 channels plus an int32 position each, in 2 layers), and the cache's
    measured bytes stay within it."""
    model, ids = make_model(2), prompt(batch=1, T=100)
    per_token = N_LAYERS * 2 * (2 * HEAD_DIM * 4 + 4)
    policy = POLICIES.get("window")(budget="8KiB")
    with torch.no_grad(), kv_policy(model, policy) as new_cache:
        cache = new_cache()
        assert cache.policy.budget == (8192 - N_LAYERS * 8) // per_token  # each layer's int64 counter too
        model(ids, cache=cache)
    assert 8192 - per_token < cache.state_bytes() <= 8192


@pytest.mark.parametrize("name", ["quest", "infllm", "clusterkv", "shadowkv"])
def test_recallable_policies_read_under_gqa_with_a_budget(name):
    """Grouped-query attention (4 query heads on 2 KV heads) with a budget on what a query reads: the
    masks cover whatever the policy attends (ShadowKV adds reconstructed keys to the cache's slots)."""
    model, ids = make_model(2), prompt(batch=1, T=100)
    with torch.no_grad(), kv_policy(model, POLICIES.get(name)(budget=48)) as new_cache:
        cache = new_cache()
        logits = model(ids, cache=cache).logits
        for _ in range(3):
            logits = model(logits[:, -1:].argmax(-1), cache=cache).logits
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("n_kv", [4, 2])
def test_a_prompt_read_in_chunks_equals_one_call(n_kv):
    """Chunks after the first attend to the whole cache plus themselves causally (one mask shared by the
    heads, the KV heads grouped by SDPA): the logits equal the model's over the whole prompt."""
    model, ids = make_model(n_kv), prompt(batch=2, T=60)
    with torch.no_grad():
        reference = model(ids).logits
        with kv_policy(model, POLICIES.get("full")()) as new_cache:
            cache = new_cache()
            parts = [model(ids[:, a:b], cache=cache).logits for a, b in ((0, 17), (17, 40), (40, 60))]
    torch.testing.assert_close(torch.cat(parts, 1), reference, rtol=1e-4, atol=1e-5)
