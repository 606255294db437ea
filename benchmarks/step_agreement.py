"""One optimizer step of grpo's TorchEngine against one of TRL's GRPOTrainer, on the same rollouts.

    .venv/bin/python benchmarks/step_agreement.py [--steps 2] [--set KEY=VALUE ...]

loss_agreement.py checks the loss formula on made-up tensors; this checks everything around it
with the real model: tokenisation, rewards, advantages, the forward pass, gradient accumulation,
clipping and AdamW. It samples one step's completions once (grpo's HFSampler, the CPU recipe's
first prompts), then feeds exactly those token ids to both trainers (TRL through its
`rollout_func` hook, so its own reward, advantage and loss code runs) and compares, per step:
the gradient each optimizer step sees (cosine and relative difference, after clipping) and the
parameters after the step. Steps after the first reuse the same rollouts on both sides.

TRL runs in benchmarks/.venv-trl (trl_env.sh); this script re-runs itself there with --trl.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TRL_PYTHON = ROOT / "benchmarks" / ".venv-trl" / "bin" / "python"
LOSS_TYPES = {"grpo": "grpo", "token_mean": "dapo", "dr_grpo": "dr_grpo"}  # ours -> TRL's


# ---------------------------------------------------------------- grpo's side (grpo's venv)
def make_rollouts(config, work: Path) -> dict:
    """One step's prompts (the trainer's own choice for step 0) and G sampled completions each."""
    from grpo import from_config
    from grpo.sampler import HFSampler
    from grpo.seeds import prompt_indices

    path = from_config.model_path(config)
    tok = from_config.tokenizer(path)
    train, _, prefill = from_config.datasets(config, tok)
    rows = train[prompt_indices(0, len(train), config.prompts_per_step, config.seed)]
    sampler = HFSampler(path, config.num_generations, config.max_completion_length,
                        temperature=config.temperature, top_p=config.top_p, seed=config.seed)
    rollouts = sampler.sample(rows["prompt"], seed=config.seed)
    lengths = rollouts.completion_lengths.tolist()
    data = {
        "model": path, "prefill": prefill, "prompts": rows["prompt"], "nums": rows["nums"],
        "target": rows["target"], "group_size": config.num_generations,
        "prompt_ids": [tok(p, add_special_tokens=False)["input_ids"] for p in rows["prompt"]],
        "completion_ids": [ids[:n] for ids, n in zip(rollouts.completion_ids.tolist(), lengths)],
        "truncated": rollouts.truncated.tolist(),
    }
    (work / "rollouts.json").write_text(json.dumps(data))
    return data


def grpo_steps(config, data: dict, steps: int, work: Path) -> list[dict]:
    from safetensors.torch import save_file

    from grpo import from_config
    from grpo.advantages import group_advantages
    from grpo.rollouts import Rollouts

    G, tok = data["group_size"], from_config.tokenizer(data["model"])
    completions = data["completion_ids"]
    texts = tok.batch_decode(completions, skip_special_tokens=True)
    rollouts = Rollouts.from_lists(
        [ids for ids in data["prompt_ids"] for _ in range(G)], completions,
        [[0.0] * len(c) for c in completions], data["truncated"], texts,
        [p for p in data["prompts"] for _ in range(G)], G, tok.pad_token_id)
    rewards = from_config.reward_set(config)(
        [data["prefill"] + t for t in texts],
        nums=[n for n in data["nums"] for _ in range(G)],
        target=[t for t in data["target"] for _ in range(G)])
    advantages = group_advantages(rewards.total, G, scale=config.scale_rewards)
    engine = from_config.engine(config, data["model"])
    grads = {}

    def keep_grads(*_):  # after clipping, before the update: what the optimizer sees
        for name, p in engine.model.named_parameters():
            grads[name] = p.grad.detach().clone()
    engine.optimizer.register_step_pre_hook(keep_grads)
    out = []
    for step in range(steps):
        metrics = engine.train_step(rollouts, advantages)
        params = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
        save_file({**{f"grad.{n}": g for n, g in grads.items()},
                   **{f"param.{n}": p for n, p in params.items()}},
                  str(work / f"grpo-{step + 1}.safetensors"))
        out.append({"reward": rewards.total.mean().item(), "grad_norm": metrics["grad_norm"],
                    "loss": metrics["loss"]})
    return out, list(engine.optimizer.param_groups[0]["betas"])


# ---------------------------------------------------------------- TRL's side (TRL's venv)
def trl_steps(settings_path: str) -> None:
    from datasets import Dataset
    from safetensors.torch import save_file
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from grpo.rewards import countdown_reward, format_reward, partial_format_reward

    s = json.loads(Path(settings_path).read_text())
    d = json.loads(Path(s["rollouts"]).read_text())
    G, work = d["group_size"], Path(s["work"])
    funcs = {"format": format_reward, "partial_format": partial_format_reward,
             "countdown": countdown_reward}

    def reward(name):
        def call(completions, nums, target, **_):
            texts = [d["prefill"] + c for c in completions]
            return funcs[name](texts, nums=nums, target=target) if name == "countdown" \
                else funcs[name](texts)
        call.__name__ = name
        return call

    by_prompt = {p: (ids, d["completion_ids"][i * G:(i + 1) * G])
                 for i, (p, ids) in enumerate(zip(d["prompts"], d["prompt_ids"]))}

    def rollout_func(prompts, trainer):
        """The fixed completions of each prompt, in the order TRL's sampler asks for them."""
        seen: dict[str, int] = {}
        prompt_ids, completion_ids = [], []
        for p in prompts:
            ids, group = by_prompt[p]
            k = seen[p] = seen.get(p, -1) + 1
            prompt_ids.append(ids)
            completion_ids.append(group[k])
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids,
                "logprobs": [[0.0] * len(c) for c in completion_ids]}

    c = s["config"]
    args = GRPOConfig(
        output_dir=str(work / "trl"), report_to="none", use_cpu=True, bf16=False,
        gradient_checkpointing=False, save_strategy="no", logging_steps=1, seed=c["seed"],
        num_generations=G, per_device_train_batch_size=c["per_device_train_batch_size"],
        gradient_accumulation_steps=c["gradient_accumulation_steps"],
        max_completion_length=c["max_completion_length"], max_steps=s["steps"],
        learning_rate=c["learning_rate"], lr_scheduler_type=c["lr_scheduler_type"],
        weight_decay=c["weight_decay"], max_grad_norm=c["max_grad_norm"], beta=c["beta"],
        loss_type=LOSS_TYPES[c["loss_type"]], epsilon=c["eps_low"], epsilon_high=c["eps_high"],
        temperature=c["temperature"], top_p=c["top_p"], num_iterations=c["num_iterations"],
        scale_rewards=c["scale_rewards"], use_bias_correction_kl=False,
        adam_beta1=c["adam_betas"][0], adam_beta2=c["adam_betas"][1],
        vllm_importance_sampling_correction=False,
    )
    dataset = Dataset.from_dict({"prompt": d["prompts"], "nums": d["nums"],
                                 "target": d["target"]})
    trainer = GRPOTrainer(model=d["model"], args=args, train_dataset=dataset,
                          reward_funcs=[reward(n) for n in c["rewards"]],
                          rollout_func=rollout_func)
    logs = []

    class Keep(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            self.grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters()}

        def on_step_end(self, args, state, control, **kw):
            params = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
            save_file({**{f"grad.{n}": g for n, g in self.grads.items()},
                       **{f"param.{n}": p for n, p in params.items()}},
                      str(work / f"trl-{state.global_step}.safetensors"))

        def on_log(self, args, state, control, logs_=None, **kw):
            logs.append(kw.get("logs") or logs_ or {})
    trainer.add_callback(Keep())
    trainer.train()
    (work / "trl_logs.json").write_text(json.dumps(logs))


# ---------------------------------------------------------------- comparison
def compare(work: Path, steps: int, initial: dict) -> list[dict]:
    from safetensors.torch import load_file

    rows = []
    for step in range(1, steps + 1):
        a, b = (load_file(str(work / f"{side}-{step}.safetensors")) for side in ("grpo", "trl"))
        names = sorted(k[5:] for k in a if k.startswith("grad."))
        missing = [n for n in names if f"grad.{n}" not in b]
        if missing:
            raise SystemExit(f"TRL's model lacks {missing[:3]}")
        ga = torch.cat([a[f"grad.{n}"].flatten().double() for n in names])
        gb = torch.cat([b[f"grad.{n}"].flatten().double() for n in names])
        da = torch.cat([(a[f"param.{n}"] - initial[n]).flatten().double() for n in names])
        db = torch.cat([(b[f"param.{n}"] - initial[n]).flatten().double() for n in names])
        rows.append({
            "step": step, "grad_norm_grpo": ga.norm().item(), "grad_norm_trl": gb.norm().item(),
            "grad_cosine": torch.nn.functional.cosine_similarity(ga, gb, dim=0).item(),
            "grad_rel_diff": ((ga - gb).norm() / gb.norm()).item(),
            "update_cosine": torch.nn.functional.cosine_similarity(da, db, dim=0).item(),
            "update_rel_diff": ((da - db).norm() / db.norm()).item(),
            "worst": max(names, key=lambda n: ((a[f"grad.{n}"] - b[f"grad.{n}"]).norm()
                                               / (b[f"grad.{n}"].norm() + 1e-30)).item()),
        })
    return rows


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--trl":
        return trl_steps(sys.argv[2])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--config", default=str(ROOT / "recipes" / "countdown-cpu.yaml"))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    from dataclasses import asdict

    from grpo.config import GRPOConfig

    overrides = [x for kv in args.set for x in (f"--{kv.split('=', 1)[0]}", kv.split("=", 1)[1])]
    config = GRPOConfig.from_args(["--config", args.config, *overrides])
    work = Path(args.workdir or tempfile.mkdtemp(prefix="step_agreement_"))
    work.mkdir(parents=True, exist_ok=True)
    data = make_rollouts(config, work)
    print(f"rollouts: {len(data['completion_ids'])} completions of {len(data['prompts'])} "
          f"prompts; logs in {work}", flush=True)
    ours, betas = grpo_steps(config, data, args.steps, work)
    if not TRL_PYTHON.exists():
        subprocess.run(["bash", str(ROOT / "benchmarks" / "trl_env.sh")], check=True)
    settings = {"rollouts": str(work / "rollouts.json"), "work": str(work), "steps": args.steps,
                "config": {k: v for k, v in asdict(config).items()
                           if isinstance(v, (int, float, str, list, tuple, bool, type(None)))}}
    settings["config"]["adam_betas"] = betas
    (work / "settings.json").write_text(json.dumps(settings))
    subprocess.run([str(TRL_PYTHON), __file__, "--trl", str(work / "settings.json")], check=True,
                   cwd=ROOT)
    from safetensors.torch import load_file
    from grpo import from_config
    initial = load_file(str(Path(from_config.model_path(config)) / "model.safetensors"))
    initial = {k: v.float() for k, v in initial.items()}
    rows = compare(work, args.steps, initial)
    print(json.dumps({"grpo": ours, "trl_logs": json.loads((work / "trl_logs.json").read_text())},
                     indent=1))
    for r in rows:
        print(r)


if __name__ == "__main__":
    main()
