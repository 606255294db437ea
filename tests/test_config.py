import pytest

from grpo.config import GRPOConfig


def test_yaml_then_cli_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("learning_rate: 5e-7\nnum_generations: 4\nper_device_train_batch_size: 8\n"
                      "rewards: [format]\nbf16: true\n")
    c = GRPOConfig.from_args(["--config", str(recipe), "--num_generations", "2",
                              "--max_steps=7", "--eps_high", "0.28", "--bf16", "false"])
    assert c.learning_rate == 5e-7 and isinstance(c.learning_rate, float)  # YAML reads 5e-7 as str
    assert (c.num_generations, c.max_steps, c.eps_high, c.bf16) == (2, 7, 0.28, False)
    assert c.rewards == ["format"]
    # 8 completions per rank per step, G = 2 -> 4 prompts per rank per step
    assert (c.completions_per_step, c.prompts_per_step) == (8, 4)


def test_unknown_keys_are_named_with_the_closest_field():
    with pytest.raises(ValueError, match=r"^unknown config keys: 'learning_rat' \(did you mean "
                                         r"'learning_rate'\?\), 'max_step' \(did you mean "
                                         r"'max_steps'\?\), 'zzz'$"):
        GRPOConfig.from_dict({"learning_rat": 1e-6, "max_steps": 3, "max_step": 3, "zzz": 1})


def test_from_args_raises_value_error_for_python_callers():
    with pytest.raises(ValueError, match=r"unknown option --learning_rat \(did you mean "
                                         r"--learning_rate\?\)"):
        GRPOConfig.from_args(["--learning_rat", "1e-6"])
    with pytest.raises(ValueError, match="^max_steps must be int, got 'ten'$"):
        GRPOConfig.from_args(["--max_steps", "ten"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_generations=3, per_device_train_batch_size=4), "not divisible by num_generations=3"),
    (dict(num_generations=1), "num_generations must be >= 2"),
    (dict(loss_type="ppo"), "loss_type"),
    (dict(eps_low=1.5), "eps_low"),
    (dict(beta=-0.1), "beta"),
    (dict(reward_weights=[1.0]), "reward_weights has 1 entries but rewards has 2"),
    (dict(offload_param="nvme"), "nvme_path"),
    (dict(zero_stage=1), "zero_stage"),
    (dict(vllm_dtype="fp16"), "vllm_dtype must be one of"),
    (dict(tis_cap=0.5), "tis_cap must be >= 1"),
])
def test_contradictory_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GRPOConfig(**kwargs)


@pytest.mark.parametrize("key,value,expected", [
    ("learning_rate", "1e-6", 1e-6),  # YAML 1.1 reads 1e-6 (no dot) as a string
    ("max_steps", "12", 12),
    ("max_steps", 12.0, 12),
    ("model", 123, "123"),
    ("bf16", "Yes", True),
    ("bf16", "false", False),
    ("bf16", 1, True),
    ("bf16", 0, False),
    ("eps_high", "none", None),  # `X | None` fields: none and null, any case
    ("eps_high", "None", None),
    ("eps_high", "NULL", None),
    ("resume_from_checkpoint", "null", None),
    ("reward_weights", "none", None),
    ("scale_rewards", "none", "none"),  # not optional: "none" is one of its choices
    ("zero_stage", "2", 2),  # a Literal's value takes the type of its choices
    ("loss_type", "dr_grpo", "dr_grpo"),
    ("dataset_column_map", {"answer": "target"}, {"answer": "target"}),
])
def test_values_are_coerced_to_the_field_type(key, value, expected):
    got = getattr(GRPOConfig.from_dict({key: value}), key)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("key,value,message", [
    ("max_steps", "ten", "max_steps must be int, got 'ten'"),
    ("max_steps", 2.5, "max_steps must be int, got 2.5"),
    ("max_steps", True, "max_steps must be int, got True"),  # a bool is no int here
    ("max_steps", None, "max_steps must be int, got None"),  # only `X | None` fields take None
    ("max_steps", "none", "max_steps must be int, got 'none'"),
    ("learning_rate", [1], "learning_rate must be float, got [1]"),
    ("eps_high", "high", "eps_high must be float or None, got 'high'"),
    ("bf16", "maybe", "bf16 must be bool, got 'maybe'"),
    ("bf16", 2, "bf16 must be bool, got 2"),
    ("rewards", "format", "rewards must be list, got 'format'"),
    ("reward_weights", 1.0, "reward_weights must be list or None, got 1.0"),
    ("dataset_column_map", ["a"], "dataset_column_map must be dict, got ['a']"),
    ("zero_stage", "1", "zero_stage must be one of (2, 3), got '1'"),
])
def test_wrong_types_name_the_key(key, value, message):
    with pytest.raises(ValueError) as error:
        GRPOConfig.from_dict({key: value})
    assert str(error.value) == message


def test_to_dict_round_trips():
    c = GRPOConfig(max_steps=3, eps_high=0.28, rewards=["format"], bf16=True, zero_stage=2,
                   dataset_column_map={"answer": "target"})
    assert GRPOConfig.from_dict(c.to_dict()) == c
    assert GRPOConfig.from_dict(c.to_dict()) != GRPOConfig()
