"""Turn the Shakespeare corpus into token arrays for training the demo model.

Two kinds of training example come out of `data/corpus/train.txt`:

* **text**: the whole corpus as one token stream, from which training takes random windows,
  each preceded by `<bos>`;
* **chat**: consecutive speeches of the plays as a one-turn conversation, rendered with the
  project's own chat template: the user says one speech, the model answers with the next.
  Half of them have thinking switched on, and the model's thought names who is speaking:
  `<|channel>thought\nROMEO answers JULIET.<channel|>...`. This gives the thinking channel of
  `gemma4-ref chat --think` something real to show.

`data/corpus/heldout.txt` becomes a text stream only; its perplexity is the demo model's score.

    python train/prepare_data.py            # writes train/_data/*.npy
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gemma4_ref.chat import ChatTemplate  # noqa: E402
from gemma4_ref.perplexity import encode_corpus  # noqa: E402
from gemma4_ref.tokenizer import Tokenizer  # noqa: E402

OUT = ROOT / "train" / "_data"
SPEAKER = re.compile(r"^([A-Z][A-Z .'-]+)\.$")  # a speech starts with "NAME." on its own line
MAX_CHAT_TOKENS = 256


def speeches(text: str) -> list[tuple[str, str]]:
    """(speaker, speech) pairs, in order; stage directions and headings are dropped."""
    out = []
    for para in text.split("\n\n"):
        lines = para.strip().split("\n")
        m = SPEAKER.match(lines[0].strip())
        if m and len(lines) > 1:
            body = " ".join(line.strip() for line in lines[1:] if not line.startswith("["))
            if body:
                out.append((m.group(1).title(), body))
    return out


def chat_examples(tok: Tokenizer, template: ChatTemplate, pairs: list) -> list[np.ndarray]:
    examples = []
    for i, ((who_a, said_a), (who_b, said_b)) in enumerate(zip(pairs, pairs[1:], strict=False)):
        if who_a == who_b:
            continue
        think = i % 2 == 0
        prompt = template.render([{"role": "user", "content": said_a}], enable_thinking=think)
        answer = f"{said_b}<turn|>\n"
        if think:
            answer = f"<|channel>thought\n{who_b} answers {who_a}.<channel|>" + answer
        ids = tok.encode(prompt + answer)
        if len(ids) <= MAX_CHAT_TOKENS:
            examples.append(np.asarray(ids, np.uint16))
    return examples


def main() -> None:
    tok = Tokenizer.from_dir(ROOT / "data" / "tokenizer")
    template = ChatTemplate.from_dir(ROOT / "data" / "tokenizer")
    OUT.mkdir(parents=True, exist_ok=True)
    for split in ("train", "heldout"):
        text = (ROOT / "data" / "corpus" / f"{split}.txt").read_text()
        stream = encode_corpus(tok, text)
        np.save(OUT / f"{split}_text.npy", stream)
        print(f"{split}: {len(text):,} characters -> {len(stream):,} tokens")
    text = (ROOT / "data" / "corpus" / "train.txt").read_text()
    chats = chat_examples(tok, template, speeches(text))
    lengths = np.array([len(c) for c in chats], np.int64)
    np.save(OUT / "train_chat.npy", np.concatenate(chats))
    np.save(OUT / "train_chat_offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
    print(f"chat: {len(chats):,} one-turn conversations, {lengths.sum():,} tokens")


if __name__ == "__main__":
    main()
