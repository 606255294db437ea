"""The command line (grpo.cli): --help, values, and one-line errors with exit status 2."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grpo.cli import build_parser, field_help, parse_config
from grpo.config import GRPOConfig

ROOT = Path(__file__).resolve().parent.parent
GROUPS = ["model and data", "sampling", "rewards", "loss", "optimisation", "engine", "lora",
          "logging and checkpoints"]


def _squeeze(text: str) -> str:
    """Text without whitespace: argparse re-wraps help lines (and breaks words at hyphens)."""
    return "".join(text.split())


def _run(*args: str) -> subprocess.CompletedProcess:
    """An entry point in its own process, logging its imports (-X importtime) to stderr."""
    env = {**os.environ, "COLUMNS": "100"}
    env.pop("VLLM_LOGGING_LEVEL", None)
    return subprocess.run([sys.executable, "-X", "importtime", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def _without_importtime(stderr: str) -> str:
    return "".join(line for line in stderr.splitlines(keepends=True)
                   if not line.startswith("import time:"))


@pytest.mark.parametrize("args,prog", [
    (["-m", "grpo.trainer", "--help"], "python -m grpo.trainer"),
    (["examples/countdown.py", "-h"], "examples/countdown.py"),
])
def test_help_lists_every_field_with_its_docstring_and_group(args, prog):
    run = _run(*args)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"usage: {prog} [--config recipe.yaml] [--key value ...]\n")
    titles = re.findall(r"^(\S[^\n]*):$", run.stdout, flags=re.M)
    assert titles == ["options", *GROUPS]
    out = _squeeze(run.stdout)
    for name, (_, doc) in field_help(GRPOConfig).items():
        assert f"--{name}" in out and _squeeze(doc) in out, name
    assert "--verbose" in out and "--local_rank" not in out
    # help comes before the heavy imports: no vLLM (nor a model) is loaded to print it
    imported = re.findall(r"^import time:.*\| +(\S+)$", run.stderr, flags=re.M)
    assert "grpo.config" in imported and "argparse" in imported
    assert not [m for m in imported if m.split(".")[0] in ("vllm", "deepspeed")]
    assert _without_importtime(run.stderr) == ""


def test_help_groups_each_option_under_its_header_with_its_default(capsys):
    with pytest.raises(SystemExit) as done:
        parse_config(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    sections = re.split(r"^(\S[^\n]*):$", out, flags=re.M)  # [usage, title, body, title, body...]
    section_of = {option: title for title, body in zip(sections[1::2], sections[2::2])
                  for option in re.findall(r"^  (--\w+)", body, flags=re.M)}
    docs = field_help(GRPOConfig)
    assert {option[2:]: title for option, title in section_of.items()
            if option not in ("--config", "--verbose", "--help")} == {
        name: group for name, (group, _) in docs.items()}
    assert section_of["--config"] == section_of["--verbose"] == "options"
    defaults = GRPOConfig()
    for name, (_, doc) in docs.items():
        assert _squeeze(f"{doc} (default: {getattr(defaults, name)})") in _squeeze(out), name
    assert _squeeze("--max_steps INT Optimizer steps (one sampled batch each). (default: 100)") \
        in _squeeze(out)
    assert "--loss_type {grpo,token_mean,dr_grpo}" in out and "--zero_stage {2,3}" in out
    assert "--bf16 [BOOL]" in out and "--rewards ITEM [ITEM ...]" in out
    assert "~20%slower" in _squeeze(out)  # a % in a docstring is printed, not %-formatted


def test_every_field_has_a_group_in_order():
    docs = field_help(GRPOConfig)
    assert list(docs) == [f.name for f in dataclasses.fields(GRPOConfig)]
    assert list(dict.fromkeys(group for group, _ in docs.values())) == GROUPS
    assert docs["learning_rate"] == ("optimisation", "AdamW learning rate.")
    assert docs["tis_cap"][0] == "loss" and docs["vllm_dtype"][0] == "sampling"


@dataclasses.dataclass
class _Documented:
    # --- first ---
    a: int = 1
    """A."""
    # --- second ---
    b: int = 2
    """B."""


@dataclasses.dataclass
class _WithoutDocstring:
    # --- first ---
    a: int = 1
    """A."""
    b: int = 2


@dataclasses.dataclass
class _WithoutGroup:
    a: int = 1
    """A."""


def test_a_field_without_docstring_or_group_is_an_error():
    assert field_help(_Documented) == {"a": ("first", "A."), "b": ("second", "B.")}
    with pytest.raises(TypeError, match=r"_WithoutDocstring\.b needs"):
        field_help(_WithoutDocstring)
    with pytest.raises(TypeError, match=r"_WithoutGroup\.a needs"):
        field_help(_WithoutGroup)


BAD = [  # (command line, recipe or None, what the error line says)
    (["--max_step", "5"], None, "unknown option --max_step (did you mean --max_steps?)"),
    (["--learning-rate=1e-6"], None, "unknown option --learning-rate (did you mean --learning_rate?)"),
    (["recipe.yaml"], None, "unexpected argument 'recipe.yaml'"),
    (["--max_steps", "ten"], None, "max_steps must be int, got 'ten'"),
    (["--max_steps", "null"], None, "max_steps must be int, got None"),
    (["--learning_rate", "fast"], None, "learning_rate must be float, got 'fast'"),
    (["--bf16", "maybe"], None, "bf16 must be bool, got 'maybe'"),
    (["--dataset_column_map", "[answer]"], None, "dataset_column_map must be dict, got ['answer']"),
    (["--max_steps", "0"], None, "max_steps must be >= 1, got 0"),
    (["--top_p", "1.5"], None, "top_p must be in (0, 1], got 1.5"),
    (["--beta", "-0.5"], None, "beta must be >= 0, got -0.5"),  # -0.5 is a value, not an option
    (["--loss_type", "ppo"], None, "loss_type must be one of ('grpo', 'token_mean', 'dr_grpo')"),
    (["--kl_estimator", "k4"], None,
     "kl_estimator must be one of ('k3', 'k1', 'k2', 'k3_plus'), got 'k4'"),
    (["--importance_sampling_level", "seq"], None,
     "importance_sampling_level must be one of ('token', 'sequence'), got 'seq'"),
    (["--tis_mode", "mask", "--tis_cap", "2"], None, "tis_mode must be one of ('token_truncate', "
     "'token_mask', 'sequence_truncate', 'sequence_mask'), got 'mask'"),
    (["--tis_mode", "sequence_mask"], None,
     "tis_mode='sequence_mask' needs tis_cap (None: no importance weights)"),
    (["--kl_ratio_weight", "maybe"], None, "kl_ratio_weight must be bool, got 'maybe'"),
    (["--zero_stage", "1"], None, "zero_stage must be one of (2, 3), got 1"),
    (["--rewards", "format", "fromat"], None, "unknown reward 'fromat'"),
    (["--num_generations", "3", "--per_device_train_batch_size", "4"], None,
     "not divisible by num_generations=3"),
    (["--reward_weights", "1.0"], None, "reward_weights has 1 entries but rewards has 2"),
    (["--offload_param", "nvme"], None, "nvme_path"),
    (["--max_steps"], None, "argument --max_steps: expected one argument"),
    (["--config"], None, "argument --config: expected one argument"),
    (["--rewards"], None, "argument --rewards: expected at least one argument"),
    (["--config", "{dir}/missing.yaml"], None, "--config {dir}/missing.yaml: No such file"),
    (["--config", "{recipe}"], "max_steps: [1, 2\n", "--config {recipe}: malformed YAML at line 2"),
    (["--config", "{recipe}"], "- max_steps\n- 5\n",
     "--config {recipe}: expected a mapping of config keys, got list"),
    (["--config", "{recipe}"], "max_step: 5\n",
     "--config {recipe}: unknown config keys: 'max_step' (did you mean 'max_steps'?)"),
    (["--config", "{recipe}"], "learning_rate: fast\n", "learning_rate must be float, got 'fast'"),
    (["--config", "{recipe}"], "num_generations: 3\n", "not divisible by num_generations=3"),
]


@pytest.mark.parametrize("argv,recipe,message", BAD)
def test_bad_input_exits_2_with_one_error_line(tmp_path, capsys, argv, recipe, message):
    path = tmp_path / "r.yaml"
    if recipe is not None:
        path.write_text(recipe)

    def fill(text: str) -> str:
        return text.replace("{recipe}", str(path)).replace("{dir}", str(tmp_path))

    with pytest.raises(SystemExit) as done:
        parse_config([fill(a) for a in argv])
    assert done.value.code == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ")
    assert fill(message) in err, err


def test_an_unknown_option_is_the_whole_error_line(capsys):
    with pytest.raises(SystemExit):
        parse_config(["--max_steps", "3", "--max_step", "5"])
    assert capsys.readouterr().err == "error: unknown option --max_step (did you mean --max_steps?)\n"


@pytest.mark.parametrize("args,error", [
    (["-m", "grpo.trainer", "--max_step", "5"],
     "error: unknown option --max_step (did you mean --max_steps?)\n"),
    (["examples/countdown.py", "--learning_rate", "fast"],  # over the default CPU recipe
     "error: learning_rate must be float, got 'fast'\n"),
])
def test_entry_points_exit_2_with_one_error_line(args, error):
    run = _run(*args)
    assert run.returncode == 2 and run.stdout == ""
    assert _without_importtime(run.stderr) == error
    assert not [m for m in re.findall(r"\| +(\S+)$", run.stderr, flags=re.M)
                if m.split(".")[0] == "vllm"]


def test_recipe_then_command_line_wins_in_any_order(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_steps: 5\nlearning_rate: 3e-5\nrewards: [format]\nbf16: true\n")
    for argv in (["--config", str(recipe), "--max_steps", "9"],
                 ["--max_steps", "9", f"--config={recipe}"]):
        c = parse_config(argv)
        assert (c.max_steps, c.learning_rate, c.rewards, c.bf16) == (9, 3e-5, ["format"], True)
    assert parse_config([f"--config={recipe}", "--bf16=false", "--learning_rate=2e-6"]
                        ).learning_rate == 2e-6


def test_none_and_null_mean_none_for_optional_fields(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("eps_high: 0.28\ntis_cap: 2.0\nnvme_path: /mnt/nvme\nreward_weights: [1, 2]\n"
                      "resume_from_checkpoint: latest\n")
    c = parse_config(["--config", str(recipe), "--eps_high", "none", "--tis_cap", "NULL",
                      "--nvme_path", "None", "--reward_weights", "null",
                      "--resume_from_checkpoint=none"])
    assert (c.eps_high, c.tis_cap, c.nvme_path, c.reward_weights, c.resume_from_checkpoint) == (
        None, None, None, None, None)
    kept = parse_config(["--config", str(recipe)])
    assert (kept.eps_high, kept.nvme_path, kept.reward_weights) == (0.28, "/mnt/nvme", [1, 2])
    recipe.write_text("tis_cap: None\nnvme_path: none\n")  # YAML reads these as strings
    c = parse_config(["--config", str(recipe), "--scale_rewards", "none"])
    assert (c.tis_cap, c.nvme_path, c.scale_rewards) == (None, None, "none")


@pytest.mark.parametrize("argv,key,expected", [
    (["--rewards", "[format,countdown]"], "rewards", ["format", "countdown"]),
    (["--rewards", "format", "countdown"], "rewards", ["format", "countdown"]),
    (["--rewards", "countdown"], "rewards", ["countdown"]),
    (["--countdown_num_numbers", "2", "5"], "countdown_num_numbers", [2, 5]),
    (["--countdown_number_range=[1, 10]"], "countdown_number_range", [1, 10]),
    (["--reward_weights", "0.5", "1"], "reward_weights", [0.5, 1]),
    (["--dataset_column_map", "{answer: target}"], "dataset_column_map", {"answer": "target"}),
    (["--learning_rate", "1e-6"], "learning_rate", 1e-6),
    (["--beta", "0"], "beta", 0.0),
    (["--zero_stage", "2"], "zero_stage", 2),
    (["--kl_estimator", "k3_plus"], "kl_estimator", "k3_plus"),
    (["--importance_sampling_level=sequence"], "importance_sampling_level", "sequence"),
    (["--kl_ratio_weight"], "kl_ratio_weight", True),
    (["--model", "yes"], "model", "yes"),  # a str field takes the word as written
    (["--output_dir", "runs/2024-01-01"], "output_dir", "runs/2024-01-01"),
    (["--model", "0123"], "model", "0123"),
])
def test_values(argv, key, expected):
    got = getattr(parse_config(argv), key)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("argv,expected", [
    (["--bf16"], True),
    (["--bf16", "--max_steps", "3"], True),
    (["--bf16", "false"], False),
    (["--bf16=No"], False),
    (["--bf16", "yes"], True),
    (["--bf16", "0"], False),
    (["--bf16", "1"], True),
    (["--bf16", "True"], True),
])
def test_booleans(tmp_path, argv, expected):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"bf16: {str(not expected).lower()}\n")  # the option must change it
    assert parse_config(["--config", str(recipe), *argv]).bf16 is expected


def test_vllm_is_quiet_unless_verbose(monkeypatch):
    for argv, preset, level in ([[], None, "WARNING"], [["--verbose"], None, None],
                                [[], "DEBUG", "DEBUG"]):
        env = {} if preset is None else {"VLLM_LOGGING_LEVEL": preset}
        monkeypatch.setattr(os, "environ", env)
        parse_config(argv)
        assert env.get("VLLM_LOGGING_LEVEL") == level


def test_deepspeed_launchers_local_rank_is_accepted_and_ignored():
    assert parse_config(["--local_rank=1", "--max_steps", "3"]) == GRPOConfig(max_steps=3)

