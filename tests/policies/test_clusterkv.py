"""``clusterkv``: k-means against a plain loop, the recall order, windows, sparse attention by hand, bytes."""

import math

import pytest
import torch

from longrecall.contract import assert_close
from longrecall.policies.base import PolicyKVState, kept_positions
from longrecall.policies.clusterkv import ClusterKV, kmeans
from longrecall.protocol import state_nbytes

from policy_helpers import check_state_properties, inputs, make_attention, run_steps


def cos(a, b):
    return float(a @ b) / (max(float(a.norm()), 1e-12) * max(float(b.norm()), 1e-12))


def plain_kmeans(points, k, iters):
    """The spec, one (row, head) at a time: farthest-point init, Lloyd steps under cosine similarity."""
    n = len(points)
    chosen = [0]
    for _ in range(1, k):
        distance = [min(1 - cos(points[i], points[c]) for c in chosen) for i in range(n)]
        chosen.append(max(range(n), key=lambda i: (distance[i], -i)))  # farthest, the earliest on ties
    centroids = [points[c].clone() for c in chosen]

    def labels():
        return [max(range(k), key=lambda j: (cos(p, centroids[j]), -j)) for p in points]

    for _ in range(iters):
        current = labels()
        for j in range(k):
            members = [p for p, label in zip(points, current, strict=True) if label == j]
            if members:
                centroids[j] = torch.stack(members).mean(0)
    return centroids, labels()


def test_kmeans_equals_a_plain_loop():
    keys = torch.randn(2, 3, 11, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    count, n_clusters = torch.tensor([11, 7]), torch.tensor([4, 2])
    valid = torch.arange(11) < count[:, None]
    centroids, labels = kmeans(keys, valid, n_clusters, iters=5)
    assert centroids.shape == (2, 3, 4, 4)
    for b in range(2):
        for h in range(3):
            points = list(keys[b, h, : count[b]])
            expected, expected_labels = plain_kmeans(points, int(n_clusters[b]), iters=5)
            assert labels[b, h, : count[b]].tolist() == expected_labels, (b, h)
            assert_close(centroids[b, h, : n_clusters[b]], torch.stack(expected), f"centroids {b} {h}",
                         atol=1e-12, rtol=1e-10)
    assert (labels[1] < 2).all()  # row 1's unused centroids get no point


def test_obvious_clusters_are_found():
    # three directions: a = e0, b = -e0 (farthest from a), c = e1; small noise, interleaved in time
    noise = 0.05 * torch.randn(15, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    groups = [0, 2, 1, 0, 0, 2, 1, 1, 2, 0, 1, 2, 0, 1, 2]
    directions = torch.tensor([[1.0, 0, 0], [-1.0, 0, 0], [0, 1.0, 0]], dtype=torch.float64)
    keys = (directions[groups] * torch.linspace(1, 3, 15, dtype=torch.float64)[:, None] + noise)[None, None]
    centroids, labels = kmeans(keys, torch.ones(1, 15, dtype=torch.bool), torch.tensor([3]), iters=3)
    assert labels[0, 0].tolist() == groups  # init: the first key (a), then b (distance 2), then c
    for g in range(3):
        assert_close(centroids[0, 0, g], keys[0, 0, torch.tensor(groups) == g].mean(0), f"centroid {g}")


def hand_state(labels, centroids):
    """Batch 1, one head, keys unused by the recall rule: positions 0..S-1 with the given clusters."""
    S = len(labels)
    pos = torch.arange(S, dtype=torch.int32)[None, None]
    k = torch.zeros(1, 1, S, 2, dtype=torch.float64)
    extra = (torch.tensor(labels, dtype=torch.int32)[None, None],)
    aux = (torch.tensor(centroids, dtype=torch.float64)[None, None], torch.tensor([len(centroids)]))
    return PolicyKVState(k, k.clone(), pos, torch.tensor([S]), extra, aux)


def recalled(budget, state, q):
    policy = ClusterKV(budget=budget, n_sink=1, window=2)
    q = torch.tensor(q, dtype=torch.float64)[None, None, None]
    mask = policy.attend_mask(state, q, torch.tensor([[state.pos.shape[2] - 1]]))
    return mask[0, 0, 0].nonzero().flatten().tolist()


def test_recall_follows_q_dot_centroid_until_the_budget():
    # sink 0; clusters 0: {1, 3, 7}, 1: {2, 5}, 2: {4, 6}; 8 and 9 not clustered yet
    state = hand_state([-1, 0, 1, 0, 2, 1, 2, 0, -1, -1], [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    # q = (2, 1): q . c = 2, 1, 3 -> clusters 2, 0, 1; R = budget - 1 - 2
    assert recalled(3 + 2, state, [2.0, 1.0]) == [0, 4, 6, 8, 9]
    assert recalled(3 + 4, state, [2.0, 1.0]) == [0, 1, 3, 4, 6, 8, 9]  # cluster 0 cut to its earliest two
    assert recalled(3 + 5, state, [2.0, 1.0]) == [0, 1, 3, 4, 6, 7, 8, 9]
    assert recalled(3 + 7, state, [2.0, 1.0]) == list(range(10))
    # q = (1, 1): q . c = 1, 1, 2: the tie goes to the older cluster (0 before 1)
    assert recalled(3 + 3, state, [1.0, 1.0]) == [0, 1, 4, 6, 8, 9]
    # q = (-1, 0): q . c = -1, 0, -1 -> cluster 1, then 0 before 2 (a tie: the older first)
    assert recalled(3 + 3, state, [-1.0, 0.0]) == [0, 1, 2, 5, 8, 9]


def test_windows_in_step_mode_and_the_whole_prompt_in_prefill_mode():
    x = inputs(2, 17, seed=2)
    step = ClusterKV(budget=9, n_sink=2, window=4, cluster_size=3)  # 2 clusters per window of 4
    _, state = make_attention(step)(x)
    labels = state.extra[0][0, 0].tolist()
    assert labels[:2] == [-1, -1] and labels[14:] == [-1] * 3  # sinks; the window being filled
    assert sorted(set(labels[2:6])) == [0, 1] and sorted(set(labels[6:10])) <= [2, 3]
    assert sorted(set(labels[10:14])) <= [4, 5] and state.aux[1].tolist() == [6, 6]
    prefill = ClusterKV(budget=9, n_sink=2, window=4, cluster_size=3, mode="prefill")
    mixer = make_attention(prefill)
    _, state = mixer(x[:, :14])
    assert state.aux[1].tolist() == [4, 4]  # ceil(12 / 3) clusters of the prompt after its sinks
    assert (state.extra[0][:, :, 2:] >= 0).all() and (state.extra[0][:, :, :2] == -1).all()
    _, state, _ = run_steps(mixer, x[:, 14:], state)
    assert (state.extra[0][:, :, 14:] == -1).all() and state.aux[1].tolist() == [4, 4]  # decoded: exact


def sparse_attention_by_hand(mixer, x, policy, prompt=0):
    """Per query: sinks + unclustered + the first R keys of the clusters by q . centroid, recomputed with
    plain_kmeans from q, k, v.  ``prompt`` > 0: prefill mode, a dense prompt clustered at its end."""
    q, k, v, _ = mixer.project(x, torch.zeros(x.shape[0], dtype=torch.int64))
    B, H, T, K = q.shape
    R = policy.budget - policy.n_sink - policy.window
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            clusters = []  # (centroid, members), in creation order
            pending = []
            for t in range(T):
                if t >= policy.n_sink:
                    pending.append(t)
                if t < prompt:  # dense prompt
                    keep = list(range(t + 1))
                else:
                    order = sorted(range(len(clusters)), key=lambda j: (-float(q[b, h, t] @ clusters[j][0]), j))
                    chosen = [i for j in order for i in clusters[j][1]][:R]
                    keep = sorted(set(range(min(policy.n_sink, t + 1))) | set(pending) | set(chosen))
                w = torch.softmax(q[b, h, t] @ k[b, h, keep].T / math.sqrt(K), -1)
                out[b, h, t] = w @ v[b, h, keep]
                due = len(pending) == policy.window if policy.mode == "step" else t == prompt - 1 and pending
                if due:
                    n = -(-len(pending) // policy.cluster_size)
                    centroids, labels = plain_kmeans(list(k[b, h, pending]), n, policy.iters)
                    clusters += [(c, [i for i, lab in zip(pending, labels, strict=True) if lab == j])
                                 for j, c in enumerate(centroids)]
                    pending = []
    return mixer.merge_heads(out)


@pytest.mark.parametrize("mode,prompt", [("step", 0), ("prefill", 15)])
def test_forward_and_steps_equal_the_hand_computation(mode, prompt):
    x = inputs(2, 23, seed=5)
    policy = ClusterKV(budget=10, n_sink=2, window=4, cluster_size=2, iters=3, mode=mode)
    mixer = make_attention(policy)
    if mode == "step":
        y, state = mixer(x)
        y_steps, s_steps, _ = run_steps(mixer, x)
        assert_close(state, s_steps, "forward state vs stepped state")
    else:
        y_prompt, state = mixer(x[:, :prompt])
        y_steps, state, _ = run_steps(mixer, x[:, prompt:], state)
        y = torch.cat([y_prompt, y_steps], 1)
    with torch.no_grad():
        expected = sparse_attention_by_hand(mixer, x, policy, prompt)
    assert_close(y, expected, f"{mode}: policy vs by hand", atol=1e-10, rtol=1e-8)
    assert kept_positions(state) == list(range(23))  # nothing is evicted
    assert not torch.allclose(y, make_attention()(x)[0])  # the recall matters here


def test_a_budget_covering_the_context_is_full_attention():
    x = inputs(2, 20, seed=6)
    y_ref, _ = make_attention()(x)
    for mode in ("step", "prefill"):
        mixer = make_attention(ClusterKV(budget=40, n_sink=2, window=4, mode=mode))
        y, _ = mixer(x[:, :12])
        y_steps, state, _ = run_steps(mixer, x[:, 12:], mixer(x[:, :12])[1])
        assert_close(torch.cat([y, y_steps], 1), y_ref, f"{mode}: budget >= length", atol=1e-12, rtol=1e-10)
        assert int(state.aux[1].min()) > 0  # clusters were made, and all recalled


def test_state_and_resident_bytes():
    policy = ClusterKV(budget=12, n_sink=2, window=4, cluster_size=2)  # R = 6
    mixer = make_attention(policy)
    _, state = mixer(inputs(2, 23, seed=7))
    # windows 2..5, 6..9, 10..13, 14..17, 18..21 clustered (2 clusters each); 22 pending
    assert state.aux[1].tolist() == [10, 10] and state.aux[0].shape == (2, 2, 10, 8)
    per_token = 2 * (2 * 8 * 8 + 4)  # heads x (k, v float64 of width 8 + an int32 position)
    labels, centroids = 2 * 2 * 23 * 4, 2 * 2 * 10 * 8 * 8
    assert mixer.state_bytes(state) == 2 * 23 * per_token + labels + centroids + 2 * 8 + 2 * 8 == state_nbytes(state)
    # the last query reads 2 sinks + 1 pending + R = 6 recalled keys
    assert policy.resident_bytes(state) == 2 * 9 * per_token + labels + centroids + 2 * 8 + 2 * 8
    unlimited = make_attention(ClusterKV())
    _, full = unlimited(inputs(2, 23, seed=7))
    assert full.extra == () and full.aux == ()  # no labels or centroids without a budget
    assert unlimited.kv_policy.policy.resident_bytes(full) == unlimited.state_bytes(full)


def test_state_properties_under_a_real_budget():
    check_state_properties(lambda mode: make_attention(ClusterKV(budget=8, n_sink=1, window=3, cluster_size=2,
                                                                 mode=mode)))


def test_invalid_fields_are_named():
    for field, bad in [("n_sink", -1), ("window", 0), ("cluster_size", 0), ("iters", -1), ("iters", 2.0)]:
        with pytest.raises(ValueError, match=field):
            ClusterKV(budget=64, **{field: bad})
    with pytest.raises(ValueError, match=r"budget must be >= n_sink \+ window \+ 1 = 13"):
        make_attention(ClusterKV(budget=12))
    make_attention(ClusterKV(budget=13))
    assert ClusterKV.bounded is False and not ClusterKV(budget=16).closed_form
