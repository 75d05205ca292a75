"""The public API: ``longrecall.__all__`` exactly, and each exported name is the object it claims to be."""

import importlib
import types

import pytest

import longrecall
from longrecall.registry import TASKS

EXPECTED_ALL = [
    "LanguageModel", "ModelState", "Mixer", "Policy", "Task", "Batch",
    "MIXERS", "POLICIES", "TASKS", "get_mixer", "get_policy", "get_task",
    "Copy", "DelayedCopy", "FactUpdate", "Induction", "ListOps", "MQAR", "MultiHop", "NIAH", "OrderRecall",
    "Passkey", "SelectiveCopy", "SetDisjointness",
    "TrainConfig", "run_contract", "state_nbytes",
]

HOMES = {  # where each exported name is defined
    "longrecall.models.lm": ["LanguageModel", "ModelState"],
    "longrecall.protocol": ["Mixer", "state_nbytes"],
    "longrecall.policies.base": ["Policy"],
    "longrecall.tasks.base": ["Task", "Batch"],
    "longrecall.registry": ["MIXERS", "POLICIES", "TASKS", "get_mixer", "get_policy", "get_task"],
    "longrecall.tasks.copy": ["Copy"],
    "longrecall.tasks.delayed_copy": ["DelayedCopy"],
    "longrecall.tasks.fact_update": ["FactUpdate"],
    "longrecall.tasks.induction": ["Induction"],
    "longrecall.tasks.listops": ["ListOps"],
    "longrecall.tasks.mqar": ["MQAR"],
    "longrecall.tasks.multi_hop": ["MultiHop"],
    "longrecall.tasks.niah": ["NIAH"],
    "longrecall.tasks.order_recall": ["OrderRecall"],
    "longrecall.tasks.passkey": ["Passkey"],
    "longrecall.tasks.selective_copy": ["SelectiveCopy"],
    "longrecall.tasks.set_disjointness": ["SetDisjointness"],
    "longrecall.config": ["TrainConfig"],
    "longrecall.contract": ["run_contract"],
}
HOME = {name: module for module, names in HOMES.items() for name in names}


def test_all_is_pinned():
    assert longrecall.__all__ == EXPECTED_ALL
    assert sorted(HOME) == sorted(EXPECTED_ALL)


@pytest.mark.parametrize("name", EXPECTED_ALL)
def test_each_name_is_the_object_it_claims(name):
    assert getattr(longrecall, name) is getattr(importlib.import_module(HOME[name]), name)


def test_star_import_gives_exactly_all():
    namespace = {}
    exec("from longrecall import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(EXPECTED_ALL)


def test_every_registered_task_is_exported_under_its_class_name():
    registered = {cls for _, cls in TASKS.items() if cls.__module__.startswith("longrecall.tasks.")}
    exported = {getattr(longrecall, name) for name in EXPECTED_ALL if HOME[name].startswith("longrecall.tasks.")}
    assert registered == exported - {longrecall.Task, longrecall.Batch}
    for cls in registered:
        assert longrecall.get_task(cls.registry_key) is cls


def test_the_registries_hold_the_exported_base_classes():
    assert all(issubclass(cls, longrecall.Mixer) for _, cls in longrecall.MIXERS.items())
    assert all(issubclass(cls, longrecall.Policy) for _, cls in longrecall.POLICIES.items())
    assert all(issubclass(cls, longrecall.Task) for _, cls in longrecall.TASKS.items())


def test_train_stays_the_training_module():
    """README: ``longrecall.train.train(config)``; re-exporting the function would shadow the module."""
    import longrecall.train as module

    assert isinstance(module, types.ModuleType) and module.__name__ == "longrecall.train"
    assert callable(module.train) and module.train.__module__ == "longrecall.train"
    assert "train" not in longrecall.__all__
