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


def test_unknown_key_names_it_and_suggests_the_closest():
    with pytest.raises(ValueError, match=r"'learning_rat' \(did you mean 'learning_rate'\?\)"):
        GRPOConfig.from_args(["--learning_rat", "1e-6"])


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


def test_wrong_type_from_the_command_line():
    with pytest.raises(ValueError, match="max_steps"):
        GRPOConfig.from_args(["--max_steps", "ten"])
