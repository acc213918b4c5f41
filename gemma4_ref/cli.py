"""The `gemma4-ref` command: generate, chat, verify and quantize.

    gemma4-ref generate --prompt "Once upon a time" --max-new-tokens 40
    gemma4-ref generate --prompt "Describe this image:" --image photo.jpg
    gemma4-ref chat --think
    gemma4-ref chat --image photo.jpg --message "What is in it?"
    gemma4-ref chat --audio clip.wav --message "Transcribe this."
    gemma4-ref verify --model path/to/checkpoint
    gemma4-ref quantize --model path/to/checkpoint --out path/to/checkpoint-w4a16

`--model` defaults to the embedded model in `data/`. Text streams to stdout as it is made;
progress and timings go to stderr, so stdout stays clean for pipes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .errors import Gemma4Error, InputError


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load(a: argparse.Namespace):
    from .model import DEFAULT_MODEL, load_model

    where = a.model or DEFAULT_MODEL
    _log(f"loading {where} ...")

    def progress(msg: str) -> None:
        print(f"\r  {msg}   ", end="", file=sys.stderr, flush=True)

    model = load_model(a.model, progress=progress, weights=a.weights)
    print(file=sys.stderr)
    how = "decoder read into memory" if model.resident else "memory-mapped"
    _log(
        f"loaded in {model.load_seconds:.2f}s: {model.config.num_hidden_layers} layers, "
        f"hidden {model.config.hidden_size}, {model.weight_bytes / 1e6:.1f} MB of weights "
        f"({how})"
    )
    return model


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="checkpoint folder (default: the embedded model in data/)")
    p.add_argument(
        "--weights",
        choices=("auto", "memory", "mmap"),
        default="auto",
        help="read the decoder's weights into memory (faster decode) or map them (instant "
        "load, models larger than RAM); auto: read them if they fit",
    )


def _sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling (defaults: the checkpoint's generation_config.json)")
    g.add_argument("--temperature", type=float, help="0 = greedy")
    g.add_argument("--top-k", type=int, help="keep the k most likely tokens (0 = off)")
    g.add_argument("--top-p", type=float, help="keep the smallest set with this probability")
    g.add_argument("--seed", type=int, help="random seed for sampling")
    g.add_argument("--max-new-tokens", type=int, default=None)


def _sampling(a: argparse.Namespace) -> dict:
    return {
        "max_new_tokens": a.max_new_tokens,
        "temperature": a.temperature,
        "top_k": a.top_k,
        "top_p": a.top_p,
        "seed": a.seed,
    }


def cmd_generate(a: argparse.Namespace) -> int:
    from .tokenizer import StreamDecoder

    if not a.prompt:
        raise InputError("--prompt is empty; give some text to continue.")
    model = _load(a)
    tok = model._need_tokenizer()
    bos = [model.config.bos_token_id] if model.config.bos_token_id is not None else []
    prompt = a.prompt
    images = a.image or None
    audio = a.audio or None
    # No placeholder written: the media come first, as in Gemma 4's model card examples.
    if audio and "<|audio|>" not in prompt:
        prompt = "<|audio|>" * len(audio) + prompt
    if images and "<|image|>" not in prompt:
        prompt = "<|image|>" * len(images) + prompt
    ids = bos + tok.encode(prompt)
    decoder = StreamDecoder(tok, skip_special_tokens=True)
    sys.stdout.write(a.prompt)
    sys.stdout.flush()
    t0 = time.perf_counter()
    first = None
    n = 0
    for token in model.stream(ids, images=images, audio=audio, **_sampling(a)):
        if first is None:
            first = time.perf_counter()
        n += 1
        sys.stdout.write(decoder.push(token))
        sys.stdout.flush()
    sys.stdout.write(decoder.finish() + "\n")
    end = time.perf_counter()
    if first is not None:
        decode = n - 1
        rate = f", decode {decode / (end - first):.1f} tok/s" if decode and end > first else ""
        _log(f"[{len(ids)} prompt tokens in {first - t0:.2f}s, {n} new tokens{rate}]")
    return 0


class _ChannelPrinter:
    """Streams a reply, labelling the thinking channel and hiding it unless asked to show it.

    Gemma 4 writes its thoughts as `<|channel>thought\n...<channel|>`. The markers are single
    special tokens, so each arrives as a whole piece; the channel's name ("thought") runs to the
    first newline and is not shown.
    """

    def __init__(self, show_thinking: bool):
        self.show_thinking = show_thinking
        self.in_thought = False
        self.header: str | None = None  # the channel name, while it is being read

    def __call__(self, piece: str) -> None:
        if piece == "<|channel>":
            self.in_thought, self.header = True, ""
            piece = "[thinking] "
        elif piece == "<channel|>":
            self.in_thought, self.header = False, None
            if self.show_thinking:
                sys.stdout.write("\n[answer] ")
            return
        elif piece in ("<turn|>", "<eos>"):
            return
        elif self.header is not None:
            self.header += piece
            if "\n" not in self.header:
                return
            piece = self.header.split("\n", 1)[1]
            self.header = None
        if self.show_thinking or not self.in_thought:
            sys.stdout.write(piece)
            sys.stdout.flush()


def cmd_chat(a: argparse.Namespace) -> int:
    model = _load(a)
    model._need_tokenizer()
    messages: list[dict] = []
    if a.system:
        messages.append({"role": "system", "content": a.system})
    interactive = a.message is None
    queue = list(a.message or [])
    if interactive:
        _log("type a message; an empty line or Ctrl-D ends the chat")
    while True:
        if queue:
            text = queue.pop(0)
            print(f"> {text}")
        elif interactive:
            try:
                text = input("> ")
            except EOFError:
                print()
                return 0
            if not text.strip():
                return 0
        else:
            return 0
        content: str | list[dict] = text
        if (a.image or a.audio) and not any(m["role"] == "user" for m in messages):
            # the images and clips belong to the first user turn
            content = [{"type": "image", "path": path} for path in a.image or []]
            content += [{"type": "audio", "path": path} for path in a.audio or []]
            content.append({"type": "text", "text": text})
        messages.append({"role": "user", "content": content})
        printer = _ChannelPrinter(show_thinking=a.think)
        reply = model.chat(messages, enable_thinking=a.think, on_text=printer, **_sampling(a))
        print()
        messages.append({"role": "assistant", "content": reply.answer})


def cmd_verify(a: argparse.Namespace) -> int:
    from .verify import verify

    return verify(
        a.model, prompt=a.prompt, max_new_tokens=a.max_new_tokens, prompt_len=a.prompt_len
    )


def cmd_quantize(a: argparse.Namespace) -> int:
    """Quantize a checkpoint, then compare the result with its source on held-out text."""
    from pathlib import Path

    from .model import DEFAULT_MODEL, load_model
    from .perplexity import encode_corpus, windows
    from .quantize import compare_models, quantize_checkpoint

    src = Path(a.model) if a.model else DEFAULT_MODEL
    _log(f"quantizing {src} -> {a.out} ...")
    report = quantize_checkpoint(
        src, Path(a.out), group_size=a.group_size, bits=a.bits, symmetric=not a.asymmetric
    )
    print(report.table())
    text_path = (
        Path(a.eval_text) if a.eval_text else DEFAULT_MODEL.parent / "corpus" / "heldout.txt"
    )
    if a.eval_windows <= 0:
        return 0
    if not text_path.is_file():
        if a.eval_text:
            raise InputError(f"--eval-text {text_path} is not a file.")
        _log(f"{text_path} is absent: the comparison with the source model is skipped")
        return 0
    source, quantized = load_model(src), load_model(a.out)
    tok = quantized._need_tokenizer()
    batch = windows(encode_corpus(tok, text_path.read_text()), a.eval_seq, a.eval_windows)
    if len(batch) == 0:
        raise InputError(f"{text_path} is shorter than one {a.eval_seq}-token window.")
    _log(f"comparing on {len(batch)} windows of {a.eval_seq} tokens of {text_path} ...")

    def progress(i: int, n: int) -> None:
        print(f"\r  window {i}/{n}", end="\n" if i == n else "", file=sys.stderr, flush=True)

    print(compare_models(source, quantized, batch, progress).summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gemma4-ref", description="Run and verify Gemma 4 checkpoints on a CPU."
    )
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="continue a prompt, streaming the text")
    _model_args(g)
    g.add_argument("--prompt", required=True)
    g.add_argument(
        "--image",
        action="append",
        help="an image file (repeatable); it fills a <|image|> in the prompt, else goes first",
    )
    g.add_argument(
        "--audio",
        action="append",
        help="a 16 kHz WAV file (repeatable); it fills a <|audio|> in the prompt, else goes first",
    )
    _sampling_args(g)
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="multi-turn chat with the checkpoint's chat template")
    _model_args(c)
    c.add_argument("--think", action="store_true", help="enable and show the thinking channel")
    c.add_argument("--system", help="a system message")
    c.add_argument(
        "--message", action="append", help="a user turn (repeatable); without it, read stdin"
    )
    c.add_argument(
        "--image", action="append", help="an image file for the first user turn (repeatable)"
    )
    c.add_argument(
        "--audio", action="append", help="a 16 kHz WAV file for the first user turn (repeatable)"
    )
    _sampling_args(c)
    c.set_defaults(func=cmd_chat)

    v = sub.add_parser("verify", help="compare this implementation with transformers")
    v.add_argument("--model", help="checkpoint folder (default: the embedded model in data/)")
    v.add_argument("--prompt", help="prompt text (default: pseudo-random ids)")
    v.add_argument("--prompt-len", type=int, default=0, help="length of the random prompt")
    v.add_argument("--max-new-tokens", type=int, default=32)
    v.set_defaults(func=cmd_verify)

    q = sub.add_parser(
        "quantize",
        help="write a packed int4/int8 (compressed-tensors pack-quantized) copy of a checkpoint",
    )
    q.add_argument("--model", help="source checkpoint folder (default: the embedded model)")
    q.add_argument("--out", required=True, help="output folder")
    q.add_argument(
        "--group-size", type=int, default=32, help="inputs per scale (0: one scale per row)"
    )
    q.add_argument("--bits", type=int, default=4, choices=(4, 8))
    q.add_argument("--asymmetric", action="store_true", help="min-max scales with zero points")
    q.add_argument(
        "--eval-text",
        help="text to compare the two models on (default: data/corpus/heldout.txt)",
    )
    q.add_argument("--eval-windows", type=int, default=8, help="token windows compared (0: skip)")
    q.add_argument("--eval-seq", type=int, default=256, help="tokens per window")
    q.set_defaults(func=cmd_quantize)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Gemma4Error as e:
        _log(f"error: {e}")
        return 2
    except KeyboardInterrupt:
        _log("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
