import os

import pytest

TINY_VOCAB = 61  # the tiny_model fixture's vocabulary


def _run_slow() -> bool:
    return os.environ.get("GRPO_SLOW") == "1" or os.environ.get("CI") == "true"


def pytest_collection_modifyitems(config, items):
    if _run_slow():
        return
    skip = pytest.mark.skip(reason="slow: set GRPO_SLOW=1 (CI=true runs it)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A tiny random Llama (float32, vocabulary TINY_VOCAB) saved as a Hugging Face directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=True, pad_token_id=0, eos_token_id=1)
    path = tmp_path_factory.mktemp("tiny")
    LlamaForCausalLM(config).save_pretrained(path)
    return str(path)
