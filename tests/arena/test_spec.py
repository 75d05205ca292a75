"""Arena specs: expansion, stable ids, validation before anything runs, TOML and Python loading."""

import json
import subprocess
import sys

import pytest

from longrecall.arena.spec import ArenaSpec, RunSpec, estimated_work, load_spec, longest_first, run_id
from longrecall.config import ConfigError, TrainConfig


def grid(**changes) -> dict:
    spec = {
        "name": "t",
        "mixers": ["attention", {"name": "sliding_window", "kwargs": {"window": 8}}],
        "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 64, "num_kv_pairs": 4}}],
        "lengths": [32, 64],
        "widths": [16, 32],
        "seeds": [0, 1],
        "n_layers": 2,
        "train": {"steps": 3, "batch_size": 4, "eval_examples": 8},
    }
    spec.update(changes)
    return spec


def test_expansion_size_labels_and_configs():
    runs = load_spec(grid()).expand()
    assert len(runs) == 2 * 1 * 2 * 2 * 2
    assert all(isinstance(r, RunSpec) and isinstance(r.config, TrainConfig) for r in runs)
    assert len({r.id for r in runs}) == len(runs)
    first = runs[0]
    assert first.labels == {"spec": "t", "mixer": "attention", "mixer_kwargs": {}, "task": "mqar",
                            "task_kwargs": {"vocab_size": 64, "num_kv_pairs": 4}, "seq_len": 32, "d_model": 16,
                            "n_layers": 2, "seed": 0, "lr": TrainConfig().lr, "loss_on": "answers"}
    assert first.spec_name == "t"
    sw = [r for r in runs if r.labels["mixer"] == "sliding_window"]
    assert len(sw) == 8 and all(r.labels["mixer_kwargs"] == {"window": 8} for r in sw)
    config = sw[-1].config
    assert config.layers == ["sliding_window", "sliding_window"]
    assert config.mixer_kwargs["window"] == 8 and "n_heads" in config.mixer_kwargs  # defaults resolved
    assert config.d_model == 32 and config.seed == 1 and config.task == "mqar"
    assert config.task_kwargs["seq_len"] == 64 and config.task_kwargs["num_kv_pairs"] == 4
    assert config.task_kwargs["power_a"] == TrainConfig().task_kwargs["power_a"]  # default task layering
    assert config.steps == 3 and config.batch_size == 4 and config.out_dir is None
    assert [r.labels["seed"] for r in runs[:2]] == [0, 1]  # seeds innermost


def test_ids_stable_and_sensitive_to_results_only():
    a, b = load_spec(grid()).expand(), load_spec(grid()).expand()
    assert [r.id for r in a] == [r.id for r in b]
    config = a[0].config.to_dict()
    assert run_id(config) == a[0].id and len(a[0].id) == 16
    assert run_id({**config, "out_dir": "/somewhere"}) == a[0].id
    assert run_id({**config, "threads": 2}) == a[0].id
    assert run_id({**config, "lr": 1e-4}) != a[0].id
    changed = load_spec(grid(train={"steps": 4, "batch_size": 4, "eval_examples": 8})).expand()
    assert {r.id for r in changed}.isdisjoint(r.id for r in a)
    # giving a default explicitly, or an int for a float, is the same run
    explicit = load_spec(grid(mixers=[{"name": "attention", "kwargs": {"n_heads": 2, "rope_base": 10000}}])).expand()
    assert explicit[0].id == a[0].id


def test_ids_stable_across_processes():
    code = ("import json; from longrecall.arena.spec import load_spec; "
            f"print(json.dumps([r.id for r in load_spec({grid()!r}).expand()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [r.id for r in load_spec(grid()).expand()]


def test_task_entries_with_their_own_lengths():
    """Zoology ties kv pairs to length: a task entry's lengths replace the spec's for that task."""
    tasks = [{"task": "mqar", "kwargs": {"vocab_size": 64, "num_kv_pairs": 4}, "lengths": [32]},
             {"task": "mqar", "kwargs": {"vocab_size": 64, "num_kv_pairs": 8}, "lengths": [64]},
             {"task": "mqar", "kwargs": {"vocab_size": 64, "num_kv_pairs": 2}}]
    runs = load_spec(grid(tasks=tasks, lengths=[16], mixers=["attention"], seeds=[0])).expand()
    pairs = sorted({(r.config.task_kwargs["seq_len"], r.config.task_kwargs["num_kv_pairs"]) for r in runs})
    assert pairs == [(16, 2), (32, 4), (64, 8)]
    assert len(runs) == 3 * 2  # 3 (length, pairs) points x 2 widths
    # when every task sets its lengths, the spec's lengths may be left out
    spec = load_spec(grid(tasks=tasks[:2], lengths=[], mixers=["attention"], seeds=[0]))
    assert len(spec) == 4


def test_longest_first_orders_by_work_and_keeps_grid_order_among_equals():
    runs = load_spec(grid()).expand()  # 2 mixers x T in (32, 64) x widths (16, 32) x 2 seeds
    ordered = longest_first(runs)
    work = [estimated_work(r.config) for r in ordered]
    assert work == sorted(work, reverse=True) and sorted(r.id for r in ordered) == sorted(r.id for r in runs)
    largest = [r for r in runs if r.config.task_kwargs["seq_len"] == 64 and r.config.d_model == 32]
    assert ordered[:4] == largest  # grid order among equals: attention before the window, seed 0 before 1
    assert estimated_work(largest[0].config) == 3 * 4 * 64 * 2 * 32  # steps x batch x T x layers x width
    assert ordered[-1].config.task_kwargs["seq_len"] == 32 and ordered[-1].config.d_model == 16


def test_duplicates_collapse():
    spec = load_spec(grid(mixers=["attention", "attention", {"name": "attention", "kwargs": {}}], lengths=[32, 32],
                          seeds=[0]))
    assert len(spec.expand()) == 2  # 1 mixer x 1 length x 2 widths


@pytest.mark.parametrize(
    "changes,key",
    [
        ({"mixrs": ["attention"]}, "mixrs"),
        ({"mixers": ["attention", {"name": "atention"}]}, "mixers[1].name"),
        ({"mixers": ["nope"]}, "mixers[0]"),
        ({"mixers": [{"name": "sliding_window", "kwargs": {"windo": 4}}]}, "mixers[0].kwargs.windo"),
        ({"mixers": [{"name": "sliding_window", "kwargs": {"window": 0}}]}, "mixers[0].kwargs.window"),
        ({"mixers": [{"name": "attention", "kwargs": {"n_heads": 3}}]}, "mixers[0].kwargs.n_heads"),
        ({"mixers": [{"name": "attention", "kwarg": {}}]}, "mixers[0].kwarg"),
        ({"mixers": [3]}, "mixers[0]"),
        ({"mixers": []}, "mixers"),
        ({"tasks": ["mqr"]}, "tasks[0]"),
        ({"tasks": [{"task": "nope"}]}, "tasks[0].task"),
        ({"tasks": [{"task": "mqar", "kwargs": {"num_pairs": 4}}]}, "tasks[0].kwargs.num_pairs"),
        ({"tasks": [{"task": "mqar", "kwargs": {"power_a": 2.0}}]}, "tasks[0].kwargs.power_a"),
        ({"tasks": [{"task": "mqar", "kwargs": {"seq_len": 64}}]}, "tasks[0].kwargs.seq_len"),
        ({"tasks": []}, "tasks"),
        ({"lengths": [33]}, "lengths[0]"),
        ({"tasks": ["mqar"], "lengths": [64, 32]}, "lengths[1]"),  # too short for 16 pairs
        ({"lengths": []}, "lengths"),
        ({"lengths": 64}, "lengths"),
        ({"lengths": [64, -1]}, "lengths[1]"),
        ({"widths": [16.5]}, "widths[0]"),
        ({"widths": [True]}, "widths[0]"),
        ({"seeds": [-1]}, "seeds[0]"),
        ({"n_layers": 0}, "n_layers"),
        ({"train": {"stpes": 3}}, "train.stpes"),
        ({"train": {"steps": "3"}}, "train.steps"),
        ({"train": {"steps": 0}}, "train.steps"),
        ({"train": {"d_model": 8}}, "train.d_model"),
        ({"train": {"out_dir": "x"}}, "train.out_dir"),
        ({"train": {"eval_task_kwargs": [{"num_kv_pairs": 100}]}}, "train.eval_task_kwargs[0]"),
        ({"train": {"eval_task_kwargs": [{"bogus": 1}]}}, "train.eval_task_kwargs[0].bogus"),
        ({"train": []}, "train"),
        ({"policies": ["h2o"]}, "budgets"),  # a bounded policy needs budgets
        ({"budgets": [64]}, "budgets"),  # budgets without policies
        ({"policies": ["window", {"name": "h20"}], "budgets": [8]}, "policies[1].name"),
        ({"policies": ["window", "windw"], "budgets": [8]}, "policies[1]"),
        ({"policies": [{"name": "h2o", "kwargs": {"recnt": 2}}], "budgets": [8]}, "policies[0].kwargs.recnt"),
        ({"policies": [{"name": "h2o", "kwargs": {"recent_ratio": 2.0}}], "budgets": [8]},
         "policies[0].kwargs.recent_ratio"),
        ({"policies": [{"name": "h2o", "kwargs": {"budget": 2}}], "budgets": [8]}, "policies[0].kwargs.budget"),
        ({"policies": [{"name": "h2o", "mode": "eager"}], "budgets": [8]}, "policies[0].mode"),
        ({"policies": [{"name": "h2o", "nmae": "x"}], "budgets": [8]}, "policies[0].nmae"),
        ({"policies": [{"name": "h2o", "budgets": [0.5, 2.0]}]}, "policies[0].budgets[1]"),
        ({"policies": [{"name": "full", "budgets": [8]}]}, "policies[0].budgets"),
        ({"policies": ["window"], "budgets": [0]}, "budgets[0]"),
        ({"policies": ["window"], "budgets": [0.5, 1.5]}, "budgets[1]"),
        ({"policies": ["window"], "budgets": [True]}, "budgets[0]"),
        ({"policies": ["window"], "budgets": ["1/8"]}, "budgets[0]"),
        ({"policies": ["window"], "budgets": 8}, "budgets"),
        ({"policies": "some", "budgets": [8]}, "policies"),
        ({"policies": ["window"], "budgets": [8], "mixers": ["s4d"]}, "policies"),  # no attention layer
        ({"name": ""}, "name"),
        ({"tasks": [{"task": "mqar", "lengths": []}]}, "tasks[0].lengths"),
        ({"tasks": [{"task": "mqar", "lengths": [64, 0]}]}, "tasks[0].lengths[1]"),
        ({"tasks": [{"task": "mqar", "kwargs": {"num_kv_pairs": 16}, "lengths": [32]}]}, "tasks[0].lengths[0]"),
        ({"tasks": [{"task": "mqar", "lengths": [64]}, "mqar"], "lengths": []}, "lengths"),
    ],
)
def test_invalid_specs_name_the_key(changes, key):
    with pytest.raises(ConfigError) as info:
        load_spec(grid(**changes))
    assert str(info.value).startswith(key), str(info.value)


def test_error_messages_list_accepted_values():
    with pytest.raises(ConfigError, match="Did you mean: mixers"):
        load_spec(grid(mixrs=[]))
    with pytest.raises(ConfigError, match="Did you mean: attention") as info:
        load_spec(grid(mixers=[{"name": "atention"}]))
    assert "mamba" in str(info.value)  # the available mixers are listed
    with pytest.raises(ConfigError, match="Did you mean: window") as info:
        load_spec(grid(mixers=[{"name": "sliding_window", "kwargs": {"windo": 4}}]))
    assert "block_size" in str(info.value)
    with pytest.raises(ConfigError, match="Did you mean: steps") as info:
        load_spec(grid(train={"stpes": 3}))
    assert "batch_size" in str(info.value) and "d_model" not in str(info.value).split("Accepted keys:")[1]
    with pytest.raises(ConfigError, match="Did you mean: window") as info:
        load_spec(grid(policies=[{"name": "windw"}], budgets=[8]))
    assert "h2o" in str(info.value)  # the available policies are listed
    with pytest.raises(ConfigError, match="Did you mean: recent") as info:
        load_spec(grid(policies=[{"name": "h2o", "kwargs": {"recnt": 2}}], budgets=[8]))
    assert "recent_ratio" in str(info.value)


def test_toml_loading(tmp_path):
    path = tmp_path / "demo.toml"
    path.write_text(
        'mixers = ["attention", { name = "sliding_window", kwargs = { window = 8 } }]\n'
        'tasks = [{ task = "mqar", kwargs = { vocab_size = 64, num_kv_pairs = 4 } }]\n'
        "lengths = [32, 64]\nwidths = [16, 32]\nseeds = [0, 1]\n"
        "[train]\nsteps = 3\nbatch_size = 4\neval_examples = 8\n"
    )
    spec = load_spec(path)
    assert spec.name == "demo"  # named after the file
    assert [r.id for r in spec.expand()] == [r.id for r in load_spec(grid(name="demo")).expand()]
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\nmixers = ["attention"]\ntasks = ["mqar"]\nlengths = [32]\nwidths = [16]\n'
                   '[train]\nstpes = 1\n')
    with pytest.raises(ConfigError, match=r"^train\.stpes"):
        load_spec(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("mixers = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_spec(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "missing.toml")


def test_python_spec_and_configs(tmp_path):
    path = tmp_path / "grid.py"
    path.write_text(f"spec = {grid(name='py')!r}\n")
    assert len(load_spec(path).expand()) == 16
    obj = tmp_path / "obj.py"
    obj.write_text("from longrecall.arena.spec import ArenaSpec\n"
                   "spec = ArenaSpec(name='o', mixers=['attention'], tasks=['mqar'], lengths=[64], widths=[16])\n")
    assert len(load_spec(obj).expand()) == 1

    configs = tmp_path / "configs.py"
    configs.write_text(
        "from longrecall.config import TrainConfig\n"
        "kw = dict(vocab_size=64, seq_len=32, num_kv_pairs=4)\n"
        "configs = [TrainConfig(layers=['attention', 'attention'], d_model=16, task_kwargs=kw, steps=3),\n"
        "           TrainConfig(layers=['s4d', 'attention'], d_model=16, task_kwargs=kw, steps=3, seed=1),\n"
        "           TrainConfig(layers=['attention', 'attention'], d_model=16, task_kwargs=kw, steps=3)]\n"
    )
    runs = load_spec(configs).expand()
    assert len(runs) == 2  # the duplicate collapses
    assert runs[0].labels["mixer"] == "attention" and runs[1].labels["mixer"] == "s4d+attention"
    assert runs[0].labels["seq_len"] == 32 and runs[1].labels["seed"] == 1 and runs[0].spec_name == "configs"
    # the same run through the grid has the same id
    same = load_spec({"name": "g", "mixers": ["attention"],
                      "tasks": [{"task": "mqar", "kwargs": {"vocab_size": 64, "num_kv_pairs": 4}}],
                      "lengths": [32], "widths": [16], "train": {"steps": 3}}).expand()
    assert same[0].id == runs[0].id

    bad = tmp_path / "bad_configs.py"
    bad.write_text("configs = [{'layers': ['attention'], 'stpes': 3}]\n")
    with pytest.raises(ConfigError, match=r"^configs\[0\]\.stpes"):
        load_spec(bad)
    nothing = tmp_path / "nothing.py"
    nothing.write_text("x = 1\n")
    with pytest.raises(ConfigError, match="must define `spec`"):
        load_spec(nothing)


def test_arena_spec_direct_and_to_dict():
    spec = ArenaSpec(name="d", mixers=["s4d"], tasks=["mqar"], lengths=[64], widths=[16])
    assert len(spec) == 1 and spec.expand()[0].config.layers == ["s4d", "s4d"]
    assert load_spec(spec.to_dict()).expand()[0].id == spec.expand()[0].id


def test_lengths_reach_tasks_whose_length_is_derived():
    from longrecall.arena import load_spec

    spec = load_spec({"name": "derived", "mixers": ["attention"], "widths": [16], "lengths": [34, 66],
                      "tasks": [{"task": "copy", "kwargs": {"alphabet_size": 8}},
                                {"task": "delayed_copy", "kwargs": {"n_symbols": 4}}]})
    kwargs = {(r.labels["task"], r.labels["seq_len"]): r.config.task_kwargs for r in spec.expand()}
    assert kwargs[("copy", 34)]["string_length"] == 16 and kwargs[("copy", 66)]["string_length"] == 32
    assert kwargs[("delayed_copy", 34)]["delay"] == 34 - 9
    import pytest

    from longrecall.config import ConfigError

    with pytest.raises(ConfigError, match=r"lengths\[0\]=33"):
        load_spec({"name": "odd", "mixers": ["attention"], "widths": [16], "lengths": [33], "tasks": ["copy"]})
    with pytest.raises(ConfigError, match="string_length is set by lengths"):
        load_spec({"name": "clash", "mixers": ["attention"], "widths": [16], "lengths": [34],
                   "tasks": [{"task": "copy", "kwargs": {"string_length": 4}}]})


# ----------------------------------------------------------------------------- the learning-rate axis


def test_lrs_is_a_grid_axis_with_the_lr_in_each_label():
    runs = load_spec(grid(lrs=[1e-3, 3e-3, 1e-2], seeds=[0])).expand()
    assert len(runs) == 2 * 2 * 2 * 3
    assert sorted({r.config.lr for r in runs}) == [1e-3, 3e-3, 1e-2]
    assert all(r.labels["lr"] == r.config.lr for r in runs)
    assert len({r.id for r in runs}) == len(runs)
    # an int learning rate is the same run as its float
    assert {r.id for r in load_spec(grid(lrs=[1], seeds=[0])).expand()} == \
        {r.id for r in load_spec(grid(lrs=[1.0], seeds=[0])).expand()}


@pytest.mark.parametrize("lrs, match", [
    ("3e-3", "lrs must be a non-empty list"),
    ([1e-3, 0], r"lrs\[1\] must be a positive"),
    ([1e-3, -1e-2], r"lrs\[1\] must be a positive"),
    ([True], r"lrs\[0\] must be a positive"),
    ([float("nan")], r"lrs\[0\] must be a positive"),
])
def test_bad_lrs_name_the_key(lrs, match):
    with pytest.raises(ConfigError, match=match):
        load_spec(grid(lrs=lrs))


def test_lrs_and_train_lr_together_is_an_error():
    with pytest.raises(ConfigError, match="train.lr cannot be set together with lrs"):
        load_spec(grid(lrs=[1e-3], train={"steps": 3, "lr": 1e-3}))


def test_new_recipe_keys_at_their_defaults_keep_old_run_ids():
    """Keys added with the training recipe (loss_on, max_steps, target_accuracy, compile) enter a
    run's id only when they differ from their defaults, so stores written before them still resume."""
    from longrecall.arena.spec import ID_OMITTED_DEFAULTS, run_id

    config = TrainConfig(steps=3)
    old_style = {k: v for k, v in config.to_dict().items() if k not in ID_OMITTED_DEFAULTS}
    assert run_id(config) == run_id(old_style)
    assert run_id(TrainConfig(steps=3, loss_on="all")) != run_id(config)
    assert run_id(TrainConfig(steps=3, max_steps=6)) != run_id(config)


@pytest.mark.parametrize("train, match", [
    ({"loss_on": "everything"}, "loss_on must be one of 'answers', 'all'"),
    ({"steps": 10, "max_steps": 5}, "max_steps must be None or an int >= steps"),
    ({"target_accuracy": 1.5}, r"target_accuracy must be None or a number in \(0, 1\]"),
    ({"compile": "yes"}, "compile must be"),
])
def test_bad_recipe_keys_name_the_key(train, match):
    with pytest.raises(ConfigError, match=match):
        load_spec(grid(train={"steps": 3, **train}))


def test_a_mixer_entry_may_carry_its_own_lrs():
    spec = grid(seeds=[0], lrs=[3e-3], mixers=["attention", {"name": "sliding_window", "kwargs": {"window": 8},
                                                           "lrs": [1e-3, 3e-4]}])
    runs = load_spec(spec).expand()
    by_mixer = {}
    for r in runs:
        by_mixer.setdefault(r.labels["mixer"], set()).add(r.config.lr)
    assert by_mixer == {"attention": {3e-3}, "sliding_window": {1e-3, 3e-4}}
    with pytest.raises(ConfigError, match=r"mixers\[1\]\.lrs\[0\] must be a positive"):
        load_spec(grid(mixers=["attention", {"name": "mamba", "lrs": [0]}]))
    with pytest.raises(ConfigError, match=r"mixers\[0\]\.lrs must be a non-empty list"):
        load_spec(grid(mixers=[{"name": "mamba", "lrs": []}]))
    with pytest.raises(ConfigError, match="train.lr cannot be set together with lrs"):
        load_spec(grid(mixers=[{"name": "mamba", "lrs": [1e-3]}], train={"steps": 3, "lr": 1e-3}))


def test_validating_a_spec_allocates_nothing_and_draws_no_random_numbers():
    """Mixers are built on the meta device to validate a spec: a width of 4096 costs nothing, and
    the global generator is untouched (a spec never changes what a later seed produces)."""
    import torch

    torch.manual_seed(123)
    before = torch.get_rng_state()
    load_spec(grid(widths=[4096], seeds=[0]))
    assert torch.equal(torch.get_rng_state(), before)


def test_mixer_entry_overrides_train_keys_for_itself():
    spec = load_spec({"name": "own", "mixers": ["attention", {"name": "mamba2", "train": {"short_conv": 0}}],
                      "tasks": ["mqar"], "lengths": [64], "widths": [16], "train": {"steps": 5, "short_conv": 4}})
    runs = {r.labels["mixer"]: r.config for r in spec.expand()}
    assert runs["attention"].short_conv == 4 and runs["mamba2"].short_conv == 0
    with pytest.raises(ConfigError, match=r"mixers\[0\].train.lr"):
        load_spec({"name": "x", "mixers": [{"name": "mamba2", "train": {"lr": 1e-3}}], "tasks": ["mqar"],
                   "lengths": [64], "widths": [16]}).expand()
    with pytest.raises(ConfigError, match=r"mixers\[0\].train.bogus"):
        load_spec({"name": "x", "mixers": [{"name": "mamba2", "train": {"bogus": 1}}], "tasks": ["mqar"],
                   "lengths": [64], "widths": [16]}).expand()


def test_a_mixer_entry_sets_arguments_to_each_runs_length():
    """``seq_len_kwargs``: S4's l_max (or a long filter's length) follows each run's T, as Zoology sets
    ``l_max = input_seq_len``; the label names it "seq_len", so the mixer reads as one row across lengths;
    a name the mixer does not take, a non-list, or a clash with its kwargs is refused before anything runs."""
    spec = grid(seeds=[0], widths=[16], mixers=["attention", {"name": "base_conv", "seq_len_kwargs": ["l_max"]}])
    runs = [r for r in load_spec(spec).expand() if r.labels["mixer"] == "base_conv"]
    assert sorted((r.labels["seq_len"], r.config.mixer_kwargs["l_max"]) for r in runs) == [(32, 32), (64, 64)]
    assert all(r.labels["mixer_kwargs"] == {"l_max": "seq_len"} for r in runs)
    with pytest.raises(ConfigError, match=r"mixers\[0\]\.seq_len_kwargs\.lmax: mixer 'base_conv' does not accept"):
        load_spec(grid(mixers=[{"name": "base_conv", "seq_len_kwargs": ["lmax"]}]))
    with pytest.raises(ConfigError, match=r"mixers\[0\]\.seq_len_kwargs must be a list"):
        load_spec(grid(mixers=[{"name": "base_conv", "seq_len_kwargs": "l_max"}]))
    with pytest.raises(ConfigError, match=r"mixers\[0\]\.kwargs\.l_max is set by mixers\[0\]\.seq_len_kwargs"):
        load_spec(grid(mixers=[{"name": "base_conv", "kwargs": {"l_max": 64}, "seq_len_kwargs": ["l_max"]}]))
    # a value the mixer rejects at some length surfaces too (checked at the longest length)
    with pytest.raises(ConfigError, match="d_state"):
        load_spec(grid(mixers=[{"name": "s4", "kwargs": {"d_state": 3}, "seq_len_kwargs": ["l_max"]}]))
