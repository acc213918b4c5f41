"""Text <-> token ids for Gemma 4, on top of Hugging Face's `tokenizers` library.

Gemma 4's tokenizer is a byte-fallback BPE in SentencePiece style:

* the normalizer turns every " " into "▁" (U+2581) and the decoder turns it back; there is no
  lowercasing and no dummy prefix;
* a character with no token of its own is spelled as its UTF-8 bytes with the tokens
  ``<0x00>``..``<0xFF>`` ("byte fallback"), so nothing is ever ``<unk>``;
* the tokenizer adds no ``<bos>`` (id 2): Gemma 4's chat template writes it, and raw-text prompts
  must start with id 2 explicitly;
* the control tokens (``<|turn>`` 105, ``<turn|>`` 106, ``<|channel>`` 100, ...) are special
  added tokens, matched whole wherever they appear in the text.

All of that lives in ``tokenizer.json``; this module loads it, so the same code runs the
project's 4096-token tokenizer (``data/tokenizer``, built by ``tools/make_tokenizer.py``) and a
real Google checkpoint's 262144-token one. :class:`StreamDecoder` turns ids into text one at a
time during generation without ever splitting a character.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import tokenizers

from .config import load_json
from .errors import Gemma4Error

TOKENIZER_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"

#: Gemma's names for the tokens the model needs to know by role.
DEFAULT_BOS, DEFAULT_EOS, DEFAULT_PAD = "<bos>", "<eos>", "<pad>"

#: SentencePiece's visible space; the decoder maps it back to " ".
SPACE_MARK = "\u2581"

# The spelling `tokenizers`' ByteFallback decoder recognises as one raw byte.
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")

_HOW_TO_BUILD = (
    "Build the project's tokenizer with `python tools/make_tokenizer.py`, or point at a "
    "checkpoint directory that contains tokenizer.json."
)


class TokenizerError(Gemma4Error, ValueError):
    """tokenizer.json is missing or unreadable, or ids/text cannot be converted."""


class Tokenizer:
    """Encode text to Gemma 4 token ids and decode them back.

    Build one with :meth:`from_dir`. ``encode`` never adds ``<bos>``; prepend :attr:`bos_id`
    yourself for raw text (Gemma 4's chat template writes ``<bos>`` as text instead).
    """

    def __init__(
        self,
        backend: tokenizers.Tokenizer,
        *,
        bos_token: str = DEFAULT_BOS,
        eos_token: str = DEFAULT_EOS,
        pad_token: str = DEFAULT_PAD,
        source: str = "<in memory>",
    ) -> None:
        self._backend = backend
        self._source = source
        self._vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._bos_id = self._require(bos_token, "bos_token")
        self._eos_id = self._require(eos_token, "eos_token")
        self._pad_id = self._require(pad_token, "pad_token")
        # id -> token text, and id -> byte for <0xNN> tokens; the stream decoder needs both per id.
        self._tokens: list[str] = [backend.id_to_token(i) or "" for i in range(self._vocab_size)]
        self._byte_of: dict[int, int] = {}
        for token_id, token in enumerate(self._tokens):
            match = _BYTE_TOKEN.fullmatch(token)
            if match is not None:
                self._byte_of[token_id] = int(match.group(1), 16)
        self._special_ids = frozenset(
            token_id
            for token_id, added in backend.get_added_tokens_decoder().items()
            if added.special
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        """Load ``tokenizer.json`` (and token names from ``tokenizer_config.json``) in ``path``."""
        directory = Path(path)
        file = directory / TOKENIZER_FILE
        if not file.is_file():
            raise TokenizerError(f"{file}: no such file. {_HOW_TO_BUILD}")
        try:
            backend = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # the Rust loader raises a bare Exception on bad JSON
            raise TokenizerError(
                f"{file}: not a valid tokenizers file ({exc}). Regenerate it; {_HOW_TO_BUILD}"
            ) from exc
        names = _special_token_names(directory / CONFIG_FILE)
        return cls(backend, source=str(file), **names)

    def _require(self, token: str, role: str) -> int:
        token_id = self._backend.token_to_id(token)
        if token_id is None:
            raise TokenizerError(
                f"{self._source}: the {role} {token!r} is not in the vocabulary; fix {role} in "
                f"{CONFIG_FILE} or regenerate the tokenizer."
            )
        return token_id

    # -- properties ---------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included; must equal the model config's ``vocab_size``."""
        return self._vocab_size

    @property
    def bos_id(self) -> int:
        """Id of ``<bos>`` (2 in Gemma 4)."""
        return self._bos_id

    @property
    def eos_id(self) -> int:
        """Id of ``<eos>`` (1 in Gemma 4). Generation also stops at ``<turn|>`` (106)."""
        return self._eos_id

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>`` (0 in Gemma 4); Gemma pads on the left."""
        return self._pad_id

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special added tokens, the ones ``skip_special_tokens`` drops."""
        return self._special_ids

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying ``tokenizers.Tokenizer``."""
        return self._backend

    # -- conversion ---------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without ``<bos>``: Gemma 4's tokenizer adds no special tokens."""
        if not isinstance(text, str):
            raise TokenizerError(f"encode() takes a str, got {type(text).__name__}")
        return self._backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``; "▁" becomes " " and byte tokens are reassembled into UTF-8.

        A run of byte tokens that is not valid UTF-8 decodes to one U+FFFD per byte, as in
        ``tokenizers``. Ids outside the vocabulary are an error rather than silently dropped.
        """
        checked = self._check_ids(ids)
        return self._backend.decode(checked, skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        """Id of the token spelled ``token`` (spaces as "▁"), or None if there is none."""
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry of ``token_id``, e.g. ``"▁the"``, ``"<0x0A>"`` or ``"<|turn>"``."""
        return self._tokens[self._check_id(token_id)]

    def byte_value(self, token_id: int) -> int | None:
        """The byte a ``<0xNN>`` fallback token stands for, or None for any other token."""
        return self._byte_of.get(self._check_id(token_id))

    def stream_decoder(self, skip_special_tokens: bool = False) -> StreamDecoder:
        """A :class:`StreamDecoder` for this tokenizer."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    def _check_id(self, token_id: int) -> int:
        try:
            value = operator.index(token_id)  # accepts NumPy integers, rejects floats
        except TypeError:
            raise TokenizerError(f"token id {token_id!r} is not an integer") from None
        if not 0 <= value < self._vocab_size:
            raise TokenizerError(
                f"token id {value} is outside the vocabulary (0..{self._vocab_size - 1}); the "
                "model and tokenizer disagree on vocab_size"
            )
        return value

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        return [self._check_id(token_id) for token_id in ids]

    def __repr__(self) -> str:
        return f"Tokenizer({self._source!r}, vocab_size={self._vocab_size})"


class StreamDecoder:
    """Incremental detokenizer: feed ids one at a time, get text as soon as it is final.

    Concatenating every :meth:`push` result and the final :meth:`finish` gives exactly
    ``tokenizer.decode(all_ids, skip_special_tokens)``. Tokens decode independently except for
    byte-fallback tokens: a character outside the vocabulary (an emoji, CJK) arrives as two to
    four ``<0xNN>`` tokens, and the batch decoder judges a whole run of consecutive byte tokens at
    once -- valid UTF-8 becomes text, invalid becomes one U+FFFD per byte. So a run is held back
    until the first non-byte token (or :meth:`finish`) closes it; nothing is ever emitted
    half-way through a character.

    A skipped special token is dropped before decoding, so it does not close a run: the bytes on
    either side of it join, exactly as in ``decode(..., skip_special_tokens=True)``.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._pending = bytearray()

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes (often "", while bytes are pending)."""
        tokenizer = self._tokenizer
        token = tokenizer.id_to_token(token_id)  # validates the id
        if self._skip_special and token_id in tokenizer.special_ids:
            return ""
        byte = tokenizer.byte_value(token_id)
        if byte is not None:
            self._pending.append(byte)
            return ""
        return self._flush() + token.replace(SPACE_MARK, " ")

    def finish(self) -> str:
        """End of stream: release any held bytes (U+FFFD per byte if they are not valid UTF-8)."""
        return self._flush()

    def reset(self) -> None:
        """Forget held bytes, to start a new sequence."""
        self._pending.clear()

    @property
    def pending_bytes(self) -> int:
        """How many byte-fallback bytes are held back, waiting for their run to end."""
        return len(self._pending)

    def _flush(self) -> str:
        if not self._pending:
            return ""
        try:
            text = self._pending.decode("utf-8")
        except UnicodeDecodeError:
            # `tokenizers` replaces the whole run, byte for byte, not just the bad bytes.
            text = "\ufffd" * len(self._pending)
        self._pending.clear()
        return text


def _special_token_names(config_file: Path) -> dict[str, str]:
    """bos/eos/pad token names from tokenizer_config.json; Gemma's names if it is absent."""
    names = {"bos_token": DEFAULT_BOS, "eos_token": DEFAULT_EOS, "pad_token": DEFAULT_PAD}
    config = load_json(config_file, missing_ok=True)
    for key in names:
        value = config.get(key)
        # transformers writes either a plain string or an AddedToken dict with "content".
        if isinstance(value, Mapping):
            value = value.get("content")
        if isinstance(value, str):
            names[key] = value
    return names
