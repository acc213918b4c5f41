"""The command line streams the same text the API produces, and keeps thinking apart."""

import gemma4_ref
from gemma4_ref.cli import main


def test_generate_streams_the_greedy_continuation(capsys):
    model = gemma4_ref.load_model()
    prompt = "ROMEO. But soft, what light"
    ids = [2] + model.tokenizer.encode(prompt)
    expected = model.tokenizer.decode(
        model.generate(ids, max_new_tokens=12, temperature=0.0), skip_special_tokens=True
    )
    rc = main(["generate", "--prompt", prompt, "--max-new-tokens", "12", "--temperature", "0"])
    out = capsys.readouterr()
    assert rc == 0
    assert out.out == prompt + expected + "\n"
    assert "new tokens" in out.err  # timings go to stderr, not into the text


def test_chat_shows_thinking_apart_from_the_answer(capsys):
    model = gemma4_ref.load_model()
    messages = [{"role": "user", "content": "What say you, my lord?"}]
    reply = model.chat(messages, enable_thinking=True, temperature=0.0, max_new_tokens=60)
    rc = main(
        ["chat", "--think", "--message", "What say you, my lord?", "--temperature", "0"]
        + ["--max-new-tokens", "60"]
    )
    out = capsys.readouterr().out
    assert rc == 0
    assert reply.thinking  # the demo model was trained to think aloud
    assert f"[thinking] {reply.thinking}" in out
    assert f"[answer] {reply.answer}" in out


def test_chat_without_think_hides_no_answer(capsys):
    rc = main(["chat", "--message", "Good morrow.", "--temperature", "0", "--max-new-tokens", "30"])
    out = capsys.readouterr().out
    assert rc == 0 and "[thinking]" not in out
    assert out.startswith("> Good morrow.\n") and len(out.strip()) > len("> Good morrow.")
