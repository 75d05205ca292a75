import pytest

from longrecall.config import ConfigError, TrainConfig, load_config


def test_layering_defaults_file_cli(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('d_model = 32\nsteps = 7\nlayers = ["s4d", "attention"]\n[mixer_kwargs]\nn_heads = 4\n')
    config = load_config(TrainConfig, path, ["--steps=9", "--mixer_kwargs.n_heads=2", "--lr=1e-3", "--threads=None"])
    assert config.d_model == 32  # from the file
    assert config.steps == 9  # the command line wins
    assert config.layers == ["s4d", "attention"]
    assert config.mixer_kwargs == {"n_heads": 2}
    assert config.lr == 1e-3 and config.threads is None
    assert config.batch_size == TrainConfig().batch_size  # default


def test_unknown_key_lists_accepted_names():
    with pytest.raises(ConfigError, match="Did you mean: steps"):
        load_config(TrainConfig, None, ["--stpes=3"])


@pytest.mark.parametrize("arg", ["--steps=abc", "--steps=1.5", "--lr=[1]", "--layers=attention", "--mlp=3"])
def test_wrong_types_rejected(arg):
    with pytest.raises(ConfigError):
        load_config(TrainConfig, None, [arg])


@pytest.mark.parametrize(
    "kwargs,name",
    [(dict(steps=0), "steps"), (dict(lr=0.0), "lr"), (dict(layers=["nope"]), "layers"), (dict(task="nope"), "task"),
     (dict(min_lr_ratio=2.0), "min_lr_ratio"), (dict(batch_size=-1), "batch_size"),
     (dict(warmup_steps=-1), "warmup_steps")],
)
def test_invalid_values_named(kwargs, name):
    with pytest.raises(ConfigError, match=name):
        TrainConfig(**kwargs)


def test_missing_file_and_malformed_override(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(TrainConfig, tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="--key=value"):
        load_config(TrainConfig, None, ["steps=3"])


def test_another_task_starts_from_its_own_defaults():
    from longrecall.tasks.mqar import CPU_SCALE

    assert TrainConfig().task_kwargs == CPU_SCALE
    assert (load_config(TrainConfig, None, ["--task_kwargs.num_kv_pairs=8"]).task_kwargs
            == {**CPU_SCALE, "num_kv_pairs": 8})
    # MQAR's CPU-scale arguments must not leak into another task
    assert load_config(TrainConfig, None, ["--task=passkey"]).task_kwargs == {}
    assert (load_config(TrainConfig, None, ["--task=copy", "--task_kwargs.string_length=8"]).task_kwargs
            == {"string_length": 8})
    assert TrainConfig(task="copy").task_kwargs == {}


@pytest.mark.parametrize("argv, match", [
    (["--loss_on=tokens"], "loss_on must be one of 'answers', 'all', got 'tokens'"),
    (["--steps=100", "--max_steps=50"], r"max_steps must be None or an int >= steps \(100\), got 50"),
    (["--max_steps=1.5"], "max_steps must be of type"),
    (["--target_accuracy=0"], r"target_accuracy must be None or a number in \(0, 1\]"),
    (["--early_stop_accuracy=2"], r"early_stop_accuracy must be None or a number in \(0, 1\]"),
    (["--compile=yes"], "compile must be of type"),
])
def test_recipe_keys_reject_bad_values_naming_the_key(argv, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TrainConfig, argv=argv)


def test_recipe_keys_load_from_the_command_line():
    config = load_config(TrainConfig, argv=["--loss_on=all", "--steps=100", "--max_steps=300", "--target_accuracy=0.9",
                                            "--compile=true"])
    assert (config.loss_on, config.max_steps, config.target_accuracy, config.compile) == ("all", 300, 0.9, True)
    assert TrainConfig().loss_on == "answers" and TrainConfig().max_steps is None
