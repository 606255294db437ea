"""examples/chat.py: the prompt and reply helpers by hand, the command line's errors, and the page
itself in a real headless Chromium over a real vLLM engine serving the packaged model."""

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("chat_example", ROOT / "examples" / "chat.py")
chat = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = chat  # dataclasses look their module up while the class is built
_spec.loader.exec_module(chat)

PREFILL = "Let me solve this step by step.\n<think>"


def test_prompt_is_the_seeds_three_messages_ending_in_the_open_prefill():
    from transformers import AutoTokenizer

    from grpo.models import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(None))
    system = ("You are a helpful assistant. You first thinks about the reasoning process in the "
              "mind and then provides the user with the answer.")
    # SmolLM2's ChatML template; no <|im_end|> after the prefill: the model continues it.
    expected = (f"<|im_start|>system\n{system}<|im_end|>\n"
                "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
                "<|im_start|>assistant\nLet me solve this step by step.\n<think>")
    assert chat.build_prompt(tokenizer, "What is 2+3?") == expected


@pytest.mark.parametrize("completion, thinking, answer, tagged", [
    # the trained format: thinking is the lead-in plus the think block, tags gone
    (" 2+3 is 5.</think>\n<answer>5</answer>",
     "Let me solve this step by step.\n 2+3 is 5.", "5", True),
    # generation stops at "</answer>" and drops it, so the answer is usually unclosed
    (" add them</think>\n<answer> 5 ", "Let me solve this step by step.\n add them", "5", True),
    # closed thinking, no answer tags: the raw text after </think> is the answer
    (" add</think>\nThe sum is 5.", "Let me solve this step by step.\n add", "The sum is 5.",
     False),
    # <answer> without closing the thinking: thinking is what came before <answer>
    (" add <answer>5</answer>", "Let me solve this step by step.\n add", "5", True),
    # no tags at all (the untrained base model): the whole completion, raw, is the answer
    ("\nParis is the capital.", "Let me solve this step by step.", "Paris is the capital.",
     False),
    # an empty completion: empty answer (the page shows "(no answer)")
    ("", "Let me solve this step by step.", "", False),
])
def test_split_reply(completion, thinking, answer, tagged):
    assert chat.split_reply(completion, PREFILL) == chat.Reply(thinking, answer, tagged)


def test_check_question_limits_length_and_refuses_empty():
    assert chat.check_question("a" * 10, max_chars=10) is None  # exactly at the limit is fine
    assert chat.check_question("  " + "a" * 10 + "\n", max_chars=10) is None  # stripped first
    message = chat.check_question("a" * 2345, max_chars=2000)
    assert "2,345 characters" in message and "limit is 2,000" in message
    assert chat.check_question("   ", max_chars=10) == "Type a question first."
    assert chat.check_question(None, max_chars=10) == "Type a question first."


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_command_line_errors_are_clear_and_early(tmp_path, capsys):
    assert chat.parse_args([]).share is False  # a public link only when asked for
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(SystemExit) as exit_:
        chat.main(["--model", str(missing)])
    assert "no-such-checkpoint" in str(exit_.value.code)
    with socket.socket() as busy:  # a port someone else holds: refused before vLLM starts
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        start = time.perf_counter()
        with pytest.raises(SystemExit) as exit_:
            chat.main(["--port", str(port)])
        assert f"port {port}" in str(exit_.value.code) and "in use" in str(exit_.value.code)
        assert time.perf_counter() - start < 30  # no engine was loaded
    with pytest.raises(SystemExit):
        chat.main(["--max-input-chars", "0"])
    assert "--max-input-chars must be >= 1" in capsys.readouterr().err


# --- the page in a real browser ---------------------------------------------------------------

def _chromium() -> tuple[str, str] | None:
    """Chromium, its driver and selenium (the "chat" extra), or None when any is missing."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    selenium = importlib.util.find_spec("selenium") is not None
    return (browser, driver) if browser and driver and selenium else None


def _start_server(port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, str(ROOT / "examples" / "chat.py"), "--port", str(port),
           "--max-tokens", "48", "--temperature", "0", "--max-input-chars", "200",
           "--enforce-eager"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env={**os.environ, "GRADIO_ANALYTICS_ENABLED": "False"})


def _wait_until_up(proc: subprocess.Popen, url: str, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"chat.py exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"chat.py did not serve {url} within {timeout} s:\n{log.read_text()[-3000:]}")


def _browser(browser: str, driver: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", f"--user-data-dir={tempfile.mkdtemp(prefix='grpo-chrome-')}",
                 "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.slow  # 75-105 s measured on a busy 2-core machine, most of it starting vLLM
def test_page_answers_a_question_in_a_real_browser(tmp_path):
    found = _chromium()
    if found is None:
        reason = ("needs Debian's chromium and chromium-driver and the chat extra (selenium); "
                  "scripts/setup.sh installs them")
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port, log = _free_port(), tmp_path / "chat.log"
    url = f"http://127.0.0.1:{port}/"
    proc = _start_server(port, log)
    driver = None
    try:
        _wait_until_up(proc, url, log)
        driver = _browser(*found)
        driver.get(url)
        find = driver.find_element
        question = WebDriverWait(driver, 60).until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#question textarea"))

        def value(elem_id: str) -> str:
            return find(By.CSS_SELECTOR, f"#{elem_id} textarea").get_attribute("value")

        # Too long (the server was started with --max-input-chars 200): a message, no answer.
        question.send_keys("x" * 201)
        find(By.CSS_SELECTOR, "#send").click()
        WebDriverWait(driver, 60).until(lambda d: "limit is 200" in find(By.ID, "status").text)
        assert value("answer") == "" and value("thinking") == ""

        question.clear()
        question.send_keys("What is the capital of France?")
        find(By.CSS_SELECTOR, "#send").click()
        WebDriverWait(driver, 120).until(lambda d: value("answer").strip())
        idle = "return document.querySelectorAll('.pending, .generating').length === 0"
        WebDriverWait(driver, 30).until(lambda d: d.execute_script(idle))  # outputs un-dimmed
        driver.save_screenshot(str(tmp_path / "chat.png"))
        print(f"screenshot: {tmp_path / 'chat.png'}")

        answer, thinking = value("answer"), value("thinking")
        assert "Answered" in find(By.ID, "status").text
        assert thinking.startswith("Let me solve this step by step.")  # the prefill's lead-in
        assert "<think>" not in answer and "Let me solve this step by step." not in answer
        a, t = find(By.ID, "answer").rect, find(By.ID, "thinking").rect
        apart = (a["x"] >= t["x"] + t["width"] or t["x"] >= a["x"] + a["width"]
                 or a["y"] >= t["y"] + t["height"] or t["y"] >= a["y"] + a["height"])
        assert apart, f"thinking {t} and answer {a} overlap on the page"
    finally:
        if driver is not None:
            driver.quit()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
