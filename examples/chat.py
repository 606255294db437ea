"""Chat with a checkpoint: a local Gradio page over a vLLM engine, thinking and answer apart.

    python examples/chat.py                          # the packaged SmolLM2-135M-Instruct
    python examples/chat.py --model runs/x/checkpoint-200 --temperature 0.6
    python examples/chat.py --model runs/x/checkpoint-200   # a LoRA checkpoint: base + adapter

Each question is rendered like a training prompt: Mini-R1's system prompt, the question as the
user turn, and the assistant turn prefilled with "Let me solve this step by step.\\n<think>"
(the tokenizer's chat template with `continue_final_message=True`), so a checkpoint trained on
that format answers the way it was rewarded. The page shows the thinking (the prefill's lead-in
plus the text inside <think>...</think>) and the answer (inside <answer>...</answer>, or the raw
text when the model skipped the tags) in separate boxes.

How it differs from Mini-R1's chatbot: it listens on 127.0.0.1 only; `--share` (Gradio's public
link) must be asked for. Questions longer than `--max-input-chars` get a message, not a
generation. Generation stops at "</answer>". One question is answered at a time (vLLM's `LLM` is
not thread-safe); the page is a form, not a multi-turn chat, because the prompts were trained
single-turn. No streaming: vLLM's offline `LLM` returns whole completions, shown when done.
A LoRA checkpoint (adapter_config.json inside) is served as its base model plus the adapter
through vLLM's LoRA support; `python -m grpo.export` writes a merged copy instead.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, not installed

from grpo.data import R1_PREFILL as PREFILL, R1_SYSTEM as SYSTEM_PROMPT  # noqa: E402
from grpo.export import adapter_base  # noqa: E402
from grpo.models import resolve_model  # noqa: E402
STOP = ["</answer>"]


# --- pure helpers (tests call these directly) -------------------------------------------------

def build_prompt(tokenizer, question: str, system_prompt: str = SYSTEM_PROMPT,
                 prefill: str = PREFILL) -> str:
    """The rendered chat string the model continues: system, user, and the open assistant turn
    ending in the prefill (no end-of-turn after it, which `continue_final_message` guarantees)."""
    messages = [{"role": "system", "content": system_prompt},
                {"role": "user", "content": question},
                {"role": "assistant", "content": prefill}]
    return tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True)


def check_question(question: str | None, max_chars: int) -> str | None:
    """None when the question can be sent, else the message to show instead."""
    text = (question or "").strip()
    if not text:
        return "Type a question first."
    if len(text) > max_chars:
        return (f"Your question is {len(text):,} characters long; the limit is {max_chars:,}. "
                "Shorten it and send again.")
    return None


@dataclass(frozen=True)
class Reply:
    thinking: str  # the prefill's lead-in plus the text inside <think>...</think>, tags removed
    answer: str  # inside <answer>...</answer>; the raw text when the tags are missing
    tagged: bool  # True when the answer came from <answer> tags


def split_reply(completion: str, prefill: str = PREFILL) -> Reply:
    """Split the assistant message (prefill + completion) into thinking and answer.

    The answer is the text inside the first <answer> (to </answer> or the end: generation stops at
    "</answer>" and drops it); without <answer>, the text after the last </think>; without either,
    the whole completion, raw. The thinking is everything before the answer, without tags.
    """
    full = prefill + completion
    if "<answer>" in full:
        before, _, rest = full.partition("<answer>")
        answer, tagged = rest.split("</answer>", 1)[0], True
        thinking = before
    elif "</think>" in full:
        thinking, _, answer = full.rpartition("</think>")
        tagged = False
    else:  # never closed its thinking: show what it wrote as the answer, the lead-in as thinking
        thinking, answer, tagged = prefill, completion, False
    thinking = thinking.replace("<think>", "").replace("</think>", "")
    return Reply(thinking=thinking.strip(), answer=answer.strip(), tagged=tagged)


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# --- the engine and the page -----------------------------------------------------------------

class Chat:
    """One vLLM engine behind a callable that turns a question into the page's three outputs."""

    def __init__(self, model_path: str, max_tokens: int, temperature: float, top_p: float,
                 max_input_chars: int, seed: int, kv_cache_gb: float, enforce_eager: bool,
                 adapter: str | None = None):
        """`adapter`: a LoRA checkpoint directory served on top of `model_path` (its base)."""
        import json

        from safetensors.torch import load_file

        from grpo.sampler import VLLMSampler

        config = json.loads((Path(adapter) / "adapter_config.json").read_text()) if adapter else {}
        # group_size=2 only satisfies the sampler's GRPO check; every call asks for 1 completion.
        self.sampler = VLLMSampler(model_path, group_size=2, max_tokens=max_tokens,
                                   temperature=temperature, top_p=top_p, seed=seed,
                                   kv_cache_memory_gb=kv_cache_gb, enforce_eager=enforce_eager,
                                   stop=STOP, max_lora_rank=config.get("r"))
        if adapter:
            tensors = load_file(str(Path(adapter) / "adapter_model.safetensors"))
            self.sampler.load_adapter(tensors.items(), config)
        self.max_input_chars = max_input_chars
        self.turn = 0  # a fresh seed per question, reproducible across restarts

    def answer(self, question: str) -> tuple[str, str, str]:
        """(status, thinking, answer) for the page; bad input gives a status message only."""
        problem = check_question(question, self.max_input_chars)
        if problem:
            return problem, "", ""
        prompt = build_prompt(self.sampler.tokenizer, question.strip())
        self.turn += 1
        try:
            rollouts = self.sampler.sample([prompt], group_size=1,
                                           seed=self.sampler.seed + self.turn)
        except ValueError as e:  # e.g. more tokens than the model's context
            return f"Could not answer: {e}", "", ""
        reply = split_reply(rollouts.texts[0])
        notes = []
        if not reply.tagged:
            notes.append("the model did not use `<answer>` tags; the answer box shows its raw text")
        if bool(rollouts.truncated[0]):
            notes.append(f"stopped at the {self.sampler.max_tokens}-token limit (--max-tokens)")
        status = "Answered" + (f" ({'; '.join(notes)})." if notes else ".")
        return status, reply.thinking, reply.answer or "(no answer)"


def build_page(chat: Chat, model_name: str):
    import gradio as gr

    with gr.Blocks(title="grpo chat", analytics_enabled=False) as page:
        gr.Markdown(f"### Chat with `{model_name}`\nThe system prompt and the prefill are the "
                    "ones the model was trained with; its thinking and its answer appear apart.")
        question = gr.Textbox(label=f"Question (up to {chat.max_input_chars:,} characters)",
                              lines=3, elem_id="question")
        send = gr.Button("Send", variant="primary", elem_id="send")
        status = gr.Markdown(elem_id="status")
        with gr.Row():
            thinking = gr.Textbox(label="Thinking", lines=12, interactive=False,
                                  elem_id="thinking")
            answer = gr.Textbox(label="Answer", lines=12, interactive=False, elem_id="answer")
        # One event for both triggers, so the limit covers both: vLLM's LLM is not thread-safe.
        gr.on([send.click, question.submit], chat.answer, inputs=question,
              outputs=[status, thinking, answer], concurrency_limit=1)
    return page


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="checkpoint directory (full or LoRA) or hub id (default: packaged "
                        "SmolLM2-135M-Instruct)")
    p.add_argument("--port", type=int, default=7860, help="port on 127.0.0.1")
    p.add_argument("--share", action="store_true",
                   help="also publish a public gradio.live link (anyone with it can query)")
    p.add_argument("--max-input-chars", type=int, default=2000)
    p.add_argument("--max-tokens", type=int, default=512, help="new tokens per answer")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kv-cache-gb", type=float, default=1.0, help="vLLM KV cache size")
    p.add_argument("--enforce-eager", action="store_true",
                   help="skip vLLM's graph compilation: starts in seconds, generates ~20%% slower")
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        p.error(f"--port must be in 1..65535, got {args.port}")
    for name in ("max_input_chars", "max_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.temperature < 0:
        p.error(f"--temperature must be >= 0, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        p.error(f"--top-p must be in (0, 1], got {args.top_p}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    # Cheap checks first: loading the engine takes seconds to a minute.
    try:
        model_path, adapter = resolve_model(args.model), None
        base = adapter_base(model_path)  # a LoRA checkpoint: serve its base + the adapter
        if base is not None:
            model_path, adapter = resolve_model(base), model_path
    except (FileNotFoundError, ImportError) as e:
        sys.exit(f"error: {e}")
    if not port_is_free(args.port):
        sys.exit(f"error: port {args.port} on 127.0.0.1 is in use; pick another with --port")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    chat = Chat(model_path, args.max_tokens, args.temperature, args.top_p, args.max_input_chars,
                args.seed, args.kv_cache_gb, args.enforce_eager, adapter)
    page = build_page(chat, args.model or "SmolLM2-135M-Instruct (packaged)")
    import gradio as gr

    # System fonts: the default theme fetches Google Fonts, which an offline machine can't reach.
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    page.queue().launch(
        server_name="127.0.0.1", server_port=args.port, share=args.share, theme=theme,
        ssr_mode=False, footer_links=[])


if __name__ == "__main__":
    main()
