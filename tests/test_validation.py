"""The shared argument checks: what each accepts, what it rejects, and the error's ``arg`` and message."""

import math
import pickle

import pytest

from longrecall.validation import (
    ArgumentError,
    check_bool,
    check_choice,
    check_divisor,
    check_int,
    check_number,
    check_positive,
    check_ratio,
    is_int,
    is_number,
)


def rejects(check, *args, **kwargs) -> ArgumentError:
    with pytest.raises(ArgumentError) as info:
        check(*args, **kwargs)
    return info.value


def test_argument_error_carries_arg_accepted_and_message():
    error = ArgumentError("dt_min", "<= dt_max", "dt_min=0.5 > dt_max=0.1")
    assert isinstance(error, ValueError)
    assert (error.arg, error.accepted, error.got) == ("dt_min", "<= dt_max", "dt_min=0.5 > dt_max=0.1")
    assert str(error) == "dt_min must be <= dt_max, got dt_min=0.5 > dt_max=0.1"
    copy = pickle.loads(pickle.dumps(error))  # arena workers send errors between processes
    assert type(copy) is ArgumentError and (copy.arg, str(copy)) == (error.arg, str(error))


def test_predicates():
    assert is_int(3) and not is_int(True) and not is_int(3.0)
    assert is_number(3) and is_number(0.5) and not is_number(False) and not is_number("1")


@pytest.mark.parametrize("kwargs, value", [({}, 1), ({}, 10**9), ({"minimum": 0}, 0), ({"minimum": 2}, 2),
                                           ({"maximum": 4}, 4), ({"allow_none": True}, None)])
def test_check_int_accepts(kwargs, value):
    check_int(window=value, **kwargs)


@pytest.mark.parametrize("kwargs, value, message", [
    ({}, 0, "window must be a positive int, got 0"),
    ({}, True, "window must be a positive int, got True"),
    ({}, 2.0, "window must be a positive int, got 2.0"),
    ({}, None, "window must be a positive int, got None"),
    ({"minimum": 0}, -1, "window must be a non-negative int, got -1"),
    ({"minimum": 2}, 1, "window must be an int >= 2, got 1"),
    ({"maximum": 4}, 5, "window must be an int in [1, 4], got 5"),
    ({"minimum": 0, "allow_none": True}, -1, "window must be None or a non-negative int, got -1"),
])
def test_check_int_rejects(kwargs, value, message):
    error = rejects(check_int, window=value, **kwargs)
    assert error.arg == "window" and str(error) == message


def test_multi_value_checks_name_the_first_bad_argument():
    assert rejects(check_int, n_heads=2, chunk_size=0, conv_size=-1).arg == "chunk_size"
    assert rejects(check_positive, lr=1e-3, grad_clip=0.0).arg == "grad_clip"
    assert rejects(check_bool, use_gate=True, conv_bias=1).arg == "conv_bias"


def test_check_positive():
    check_positive(lr=1e-3, n=2, big=math.inf)
    for bad in (0, -1.0, True, "1", None, math.nan):
        error = rejects(check_positive, lr=bad)
        assert error.arg == "lr" and str(error) == f"lr must be a positive number, got {bad!r}"


@pytest.mark.parametrize("low_open, high_open, inside, outside, accepted", [
    (False, False, [0, 0.5, 1], [-0.1, 1.1], "a number in [0, 1]"),
    (True, False, [0.5, 1], [0, 0.0], "a number in (0, 1]"),
    (False, True, [0, 0.999], [1, 1.0], "a number in [0, 1)"),
])
def test_check_number_interval(low_open, high_open, inside, outside, accepted):
    for value in inside:
        check_number("r", value, 0, 1, low_open=low_open, high_open=high_open)
        check_ratio("r", value, low_open=low_open, high_open=high_open)
    for value in [*outside, True, "0.5", None, math.nan]:
        for check in (lambda v: check_number("r", v, 0.0, 1.0, low_open=low_open, high_open=high_open),
                      lambda v: check_ratio("r", v, low_open=low_open, high_open=high_open)):
            error = rejects(check, value)
            assert (error.arg, error.accepted) == ("r", accepted)
            assert str(error) == f"r must be {accepted}, got {value!r}"


def test_check_number_unbounded_and_none():
    check_number("gamma", math.inf, 0, math.inf)
    assert str(rejects(check_number, "gamma", -1, 0, math.inf)) == "gamma must be a number >= 0, got -1"
    assert str(rejects(check_number, "beta", math.inf, 1, math.inf, high_open=True)) == \
        "beta must be a finite number >= 1, got inf"
    check_ratio("target", None, allow_none=True)
    assert rejects(check_ratio, "target", 0, low_open=True, allow_none=True).accepted == "None or a number in (0, 1]"
    assert rejects(check_ratio, "target", None).arg == "target"


def test_check_bool():
    check_bool(use_gate=True, conv_bias=False)
    for bad in (0, 1, "true", None):
        error = rejects(check_bool, use_gate=bad)
        assert str(error) == f"use_gate must be True or False, got {bad!r}" and error.arg == "use_gate"


def test_check_choice():
    check_choice("impl", "naive", ("naive", "chunked"))
    error = rejects(check_choice, "impl", "fused", ("naive", "chunked"))
    assert (error.arg, error.accepted) == ("impl", "one of 'naive', 'chunked'")
    assert str(error) == "impl must be one of 'naive', 'chunked', got 'fused'"
    assert rejects(check_choice, "impl", ["naive"], ("naive",)).arg == "impl"  # unhashable values are fine


def test_check_divisor():
    check_divisor("n_heads", 4, 16, "d_model")
    for bad in (3, 0, -4, 4.0, True, None):
        error = rejects(check_divisor, "n_heads", bad, 16, "d_model")
        assert str(error) == f"n_heads must be an int dividing d_model=16, got {bad!r}"


def test_protocol_reexports_the_checks():
    from longrecall import protocol, validation

    for name in ("check_int", "check_positive", "check_bool", "check_choice"):
        assert getattr(protocol, name) is getattr(validation, name)


# ----------------------------------------------------------------------------- the callers


def _construct(kind: str, name: str, kwargs: dict):
    from longrecall.registry import MIXERS, POLICIES, TASKS

    if kind == "mixer":
        return MIXERS.get(name)(16, **kwargs)
    return (TASKS if kind == "task" else POLICIES).get(name)(**kwargs)


@pytest.mark.parametrize("kind, name, kwargs, arg", [
    ("mixer", "attention", {"n_heads": 3}, "n_heads"),
    ("mixer", "attention", {"n_heads": 16}, "n_heads"),  # head width 1: no rotary pairs
    ("mixer", "mamba", {"dt_min": 0.5, "dt_max": 0.1}, "dt_min"),
    ("mixer", "mamba", {"expand": 0.01}, "expand"),  # E rounds to 0
    ("mixer", "gla", {"expand_k": 0.01}, "expand_k"),
    ("mixer", "mom", {"topk": 5}, "topk"),
    ("mixer", "s4d", {"d_state": 3}, "d_state"),
    ("mixer", "titans", {"output_gate": 1}, "output_gate"),
    ("task", "mqar", {"power_a": 2.0}, "power_a"),
    ("task", "mqar", {"seq_len": 16, "num_kv_pairs": 8}, "seq_len"),
    ("task", "niah", {"variant": "multikey", "num_needles": 1}, "num_needles"),
    ("policy", "h2o", {"budget": 8, "recent_ratio": 2.0}, "recent_ratio"),
    ("policy", "kivi", {"bits": 3}, "bits"),
    ("policy", "kivi", {"bits": 2.0}, "bits"),
    ("policy", "snapkv", {"budget": 8, "kernel": 4}, "kernel"),
    ("policy", "full", {"budget": 8}, "budget"),
    ("policy", "window", {"budget": 1.5}, "budget"),
])
def test_constructors_raise_argument_errors_naming_the_argument(kind, name, kwargs, arg):
    error = rejects(_construct, kind, name, kwargs)
    assert error.arg == arg and str(error).startswith(f"{arg} must be ")


def test_train_config_errors_are_config_errors_with_an_arg():
    from longrecall.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError) as info:
        TrainConfig(steps=0)
    assert isinstance(info.value, ArgumentError) and info.value.arg == "steps"
    assert str(info.value) == "steps must be a positive int, got 0"


def test_spec_blames_the_arg_never_the_message():
    from longrecall.arena.checks import _blamed_arg

    names = ["window", "n_heads"]
    assert _blamed_arg(ArgumentError("window", "a positive int", "0"), names) == "window"
    assert _blamed_arg(ArgumentError("head_dim", "set", "None"), names) is None  # not a key the user gave
    assert _blamed_arg(ValueError("window must be a positive int, got 0"), names) is None  # not parsed
    assert _blamed_arg(TypeError("window"), names) is None
