"""The packaged default model converts into a Hugging Face directory that really works."""

import pytest
import torch

from grpo.models import DEFAULT_MODEL, packaged_model_path, resolve_model


def test_packaged_smollm2_answers_a_question():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(DEFAULT_MODEL)
    assert path == str(packaged_model_path())
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert model.num_parameters() == 134_515_008  # 134.5 M, tied embeddings
    assert tok.chat_template  # the chat template survives the conversion
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    out = model.generate(**ids, max_new_tokens=10, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids["input_ids"].shape[1]:])


def test_bad_model_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing directory nor a hub id"):
        resolve_model(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="config.json"):
        resolve_model(tmp_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
