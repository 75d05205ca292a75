import pytest

from longrecall.protocol import Mixer
from longrecall.registry import MIXERS, POLICIES, TASKS, Registry


def test_lookup_by_short_key():
    assert MIXERS.get("attention").__name__ == "Attention"
    assert TASKS.get("mqar").__name__ == "MQAR"
    assert POLICIES.get("h2o").__name__ == "H2O" and "full" in POLICIES


def test_unknown_name_lists_close_matches_and_all_names():
    with pytest.raises(KeyError) as info:
        MIXERS.get("atention")
    message = info.value.args[0]
    assert "Did you mean: attention" in message
    for name in MIXERS.names():
        assert name in message


def test_duplicate_and_bad_names_rejected():
    registry = Registry("thing")

    @registry.register("one")
    class One:
        pass

    with pytest.raises(ValueError, match="already registered"):

        @registry.register("one")
        class Other:
            pass

    with pytest.raises(ValueError, match="lowercase"):
        registry.register("Bad-Name")


def test_registration_checks_the_base_class():
    registry = Registry("mixer", Mixer)
    with pytest.raises(TypeError, match="must subclass Mixer"):

        @registry.register("nope")
        class NotAMixer:
            pass


def test_state_growth_is_validated_at_class_creation():
    with pytest.raises(TypeError, match="state_growth"):

        class Bad(Mixer):
            state_growth = "quadratic"
