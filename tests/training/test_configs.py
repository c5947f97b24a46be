"""`trainer.train`'s flat gin names and the config dataclasses the loop takes."""

import dataclasses
import inspect
import os
import re

import pytest

from rankt5_jax.errors import ConfigError
from rankt5_jax.training import configs
from rankt5_jax.training import train as train_lib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIRECT = {"model_dir", "model", "vocab_path", "partitioner", "optimizer"}


def test_every_flat_name_maps_to_one_config_field_and_back():
    params = inspect.signature(train_lib.train).parameters
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
    assert set(params) - DIRECT == set(configs.FLAT_NAMES)
    all_fields = {
        (group, field.name)
        for group, cls in configs._GROUPS.items()
        for field in dataclasses.fields(cls)
    }
    assert set(configs.FLAT_NAMES.values()) == all_fields  # every field reachable, none twice
    loop = inspect.signature(train_lib.train_loop).parameters
    assert set(loop) == DIRECT | set(configs._GROUPS)
    # The flat defaults are the configs' defaults.
    for name, (group, field) in configs.FLAT_NAMES.items():
        default = params[name].default
        cls_default = configs._GROUPS[group].__dataclass_fields__[field].default
        if cls_default is not dataclasses.MISSING:
            assert default == cls_default, name


def test_every_gin_binding_of_trainer_train_is_a_parameter():
    bound = set()
    for root, _, files in os.walk(os.path.join(REPO, "gin")):
        for name in files:
            if name.endswith(".gin"):
                text = open(os.path.join(root, name)).read()
                bound |= set(re.findall(r"^trainer\.train\.(\w+)\s*=", text, re.M))
    assert len(bound) > 10
    assert bound <= set(inspect.signature(train_lib.train).parameters)


def test_from_flat_groups_the_settings():
    built = configs.TrainConfigs.from_flat(
        train_task="t",
        task_feature_lengths={"inputs": 32, "targets": 1},
        train_steps=10,
        checkpoint_period=5,
        keep_checkpoints=1,
        eval_task="dev",
        eval_period=5,
        log_period=2,
        stop_after_steps=4,
    )
    assert built.data == configs.DataConfig("t", {"inputs": 32, "targets": 1})
    assert built.data.length == 32
    assert built.steps.last_step(0) == 4 and built.steps.last_step(8) == 10
    assert (built.checkpoint.period, built.checkpoint.keep) == (5, 1)
    assert built.evaluation.due(5, 10) and built.evaluation.due(10, 10)
    assert not built.evaluation.due(6, 10)
    assert not configs.EvalConfig(task=None, period=5).due(5, 10)
    assert built.logging == configs.LoggingConfig(log_period=2)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="non_finite"):
        configs.StepsConfig(train_steps=1, non_finite="ignore")
    with pytest.raises(ConfigError, match="batch_szie"):
        configs.TrainConfigs.from_flat(batch_szie=4)
