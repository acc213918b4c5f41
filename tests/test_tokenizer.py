"""gemma4_ref.tokenizer against transformers' GemmaTokenizer loaded from data/tokenizer.

transformers rebuilds the tokenizer from its own GemmaTokenizer class (normalizer, decoder, BPE
options) and only takes the vocabulary and merges from tokenizer.json, so agreement here also
checks that our tokenizer.json pipeline is Gemma's.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from gemma4_ref.tokenizer import StreamDecoder, Tokenizer, TokenizerError

transformers = pytest.importorskip("transformers")

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = REPO_ROOT / "data" / "tokenizer"
HELDOUT = REPO_ROOT / "data" / "corpus" / "heldout.txt"

# Gemma 4's control tokens and their ids (architecture sheet, section 6).
GEMMA4_SPECIAL_IDS = {
    "<pad>": 0,
    "<eos>": 1,
    "<bos>": 2,
    "<unk>": 3,
    "<mask>": 4,
    "<|tool>": 46,
    "<tool|>": 47,
    "<|tool_call>": 48,
    "<tool_call|>": 49,
    "<|tool_response>": 50,
    "<tool_response|>": 51,
    '<|"|>': 52,
    "<|think|>": 98,
    "<|channel>": 100,
    "<channel|>": 101,
    "<|turn>": 105,
    "<turn|>": 106,
}

TEXTS = [
    "",
    "To be, or not to be: that is the question.",
    "  Leading spaces,   runs   of spaces, and a trailing one ",
    "Lines\nand\n\nblank lines\n\n\n\nand tabs\tinside\t\t.\r\nCRLF too.",
    "Numbers 1234567890, 3.14159 and -42e10.",
    "Grüße aus Köln; naïve café résumé",
    "你好，世界。日本語のテキスト。한국어 텍스트.",
    "Emoji 😀👍🏽👨‍👩‍👧 and flags 🇫🇷 and symbols Ω≈ç√∫",
    "Controls \x00\x01\x1f\x7f and odd spaces\u00a0\u2003\u3000 end",
    "<|turn>user\nHello<turn|>\n<|turn>model\n<|channel>thought\nhm<channel|>Hi<turn|>",
    '<bos>literal <unused3> and <0x41> and <|tool_call>call:f{x:<|"|>y<|"|>}<tool_call|>',
    "def f(x):\n    return {'a': [x, x ** 2]}  # code ~`^|\\",
]


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer.from_dir(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def hf():
    return transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)


def test_vocab_size_is_4096(ours, hf):
    assert len(hf) == 4096
    assert hf.vocab_size == 4096
    assert ours.vocab_size == len(hf)


def test_special_tokens_sit_at_gemma4_ids(ours, hf):
    for token, token_id in GEMMA4_SPECIAL_IDS.items():
        assert hf.convert_tokens_to_ids(token) == token_id, token
        assert ours.token_to_id(token) == hf.convert_tokens_to_ids(token), token
    assert (ours.bos_id, ours.eos_id, ours.pad_id) == (
        hf.bos_token_id,
        hf.eos_token_id,
        hf.pad_token_id,
    )
    assert hf.convert_ids_to_tokens(107) == "\n"  # as in Gemma 4
    assert hf.padding_side == "left"


def test_reserved_ids_are_special_and_never_produced(ours, hf):
    reserved = set(range(107))
    assert ours.special_ids == {i for i, t in hf.added_tokens_decoder.items() if t.special}
    assert ours.special_ids == reserved
    text = HELDOUT.read_text(encoding="utf-8")[:50_000]
    assert not reserved & set(hf.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(ours, hf, text):
    assert ours.encode(text) == hf.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", TEXTS[:3])
def test_no_bos_is_added(ours, hf, text):
    # Gemma 4: the chat template writes <bos>; the tokenizer's post-processor adds nothing.
    assert ours.encode(text) == hf.encode(text)


def test_heldout_text_matches_transformers(ours, hf):
    text = HELDOUT.read_text(encoding="utf-8")
    expected = hf.encode(text, add_special_tokens=False)
    assert ours.encode(text) == expected
    assert ours.decode(expected) == text


@pytest.mark.parametrize("text", TEXTS)
def test_decode_matches_transformers_and_round_trips(ours, hf, text):
    ids = hf.encode(text, add_special_tokens=False)
    assert ours.decode(ids) == hf.decode(ids) == text
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_space_mark_decodes_as_space_like_gemma(ours, hf):
    # The one string that does not round-trip: a literal U+2581 comes back as a space.
    ids = hf.encode("a\u2581b", add_special_tokens=False)
    assert ours.encode("a\u2581b") == ids
    assert ours.decode(ids) == hf.decode(ids) == "a b"


def random_ids(rng: random.Random, n: int) -> list[int]:
    """Mostly byte-fallback ids (valid and broken UTF-8), some specials, some ordinary tokens."""
    pool_bytes = list(range(108, 364))
    out = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.5:
            out.append(rng.choice(pool_bytes))
        elif kind < 0.65:
            out.append(rng.randrange(0, 107))
        else:
            out.append(rng.randrange(107, 4096))
    return out


@pytest.mark.parametrize("seed", range(5))
def test_decode_random_ids_matches_transformers(ours, hf, seed):
    ids = random_ids(random.Random(seed), 300)
    for skip in (False, True):
        assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(
            ids, skip_special_tokens=skip
        )


def stream(decoder: StreamDecoder, ids: list[int]) -> list[str]:
    return [decoder.push(token_id) for token_id in ids] + [decoder.finish()]


@pytest.mark.parametrize("text", TEXTS)
def test_stream_decoder_concatenates_to_decode(ours, hf, text):
    ids = hf.encode(text, add_special_tokens=False)
    for skip in (False, True):
        chunks = stream(ours.stream_decoder(skip), ids)
        assert "".join(chunks) == hf.decode(ids, skip_special_tokens=skip)
        # Valid text never shows a replacement character, not even transiently.
        assert not any("\ufffd" in chunk for chunk in chunks)


def test_stream_decoder_holds_partial_characters(ours, hf):
    ids = hf.encode("a😀b", add_special_tokens=False)
    byte_ids = [i for i in ids if ours.byte_value(i) is not None]
    assert len(byte_ids) == 4  # U+1F600 is four UTF-8 bytes, none in the vocabulary
    decoder = ours.stream_decoder()
    chunks = [decoder.push(i) for i in ids]
    assert [c for c in chunks if c] == ["a", "😀b"]
    assert decoder.finish() == ""


@pytest.mark.parametrize("seed", range(5))
def test_stream_decoder_on_random_ids(ours, hf, seed):
    ids = random_ids(random.Random(100 + seed), 300)
    for skip in (False, True):
        decoder = StreamDecoder(ours, skip_special_tokens=skip)
        assert "".join(stream(decoder, ids)) == hf.decode(ids, skip_special_tokens=skip)


def test_token_lookups_match_transformers(ours, hf):
    for token_id in [0, 2, 52, 105, 107, 108, 363, 364, 459, 460, 1000, 4095]:
        assert ours.id_to_token(token_id) == hf.convert_ids_to_tokens(token_id)
    assert ours.token_to_id("▁the") == hf.convert_tokens_to_ids("▁the")
    assert ours.token_to_id("definitely-not-a-token") is None
    assert ours.byte_value(hf.convert_tokens_to_ids("<0x0A>")) == 0x0A
    assert ours.byte_value(hf.convert_tokens_to_ids("▁the")) is None


def test_out_of_range_ids_are_an_error(ours):
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        ours.decode([5, 4096])
    with pytest.raises(TokenizerError, match="outside the vocabulary"):
        ours.stream_decoder().push(-1)
    with pytest.raises(TokenizerError, match="not an integer"):
        ours.id_to_token(1.5)  # type: ignore[arg-type]


def test_missing_tokenizer_file_names_file_and_fix(tmp_path):
    with pytest.raises(TokenizerError, match="tokenizer.json") as info:
        Tokenizer.from_dir(tmp_path)
    assert "make_tokenizer.py" in str(info.value)


def test_corrupt_tokenizer_file_names_file(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{ not json", encoding="utf-8")
    with pytest.raises(TokenizerError, match="not a valid tokenizers file") as info:
        Tokenizer.from_dir(tmp_path)
    assert str(tmp_path / "tokenizer.json") in str(info.value)
