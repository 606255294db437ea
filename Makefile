# The two commands of the README. Each sets up .venv first (a no-op when nothing changed).
.PHONY: setup test countdown

export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/grpo/torch_extensions
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

setup:
	@bash scripts/setup.sh

test: setup
	.venv/bin/python -m pytest $(PYTEST_ARGS)

countdown: setup
	.venv/bin/python examples/countdown.py $(ARGS)
