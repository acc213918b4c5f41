"""Gemma 4 chat prompts: render a conversation with the checkpoint's Jinja template, and split
a generated reply into its thinking and its answer.

Gemma 4 frames every turn as ``<|turn>{role}\\n{content}<turn|>\\n`` (role "system", "user" or
"model"), after a ``<bos>`` that the template itself writes. With thinking enabled the system turn
starts with ``<|think|>`` and the model writes its reasoning in a thought channel,
``<|channel>thought\\n...<channel|>``, before the answer; the turn ends with ``<turn|>``.

:class:`ChatTemplate` runs any such template -- the project's ``data/tokenizer/chat_template.jinja``
or a real Google checkpoint's -- in a sandboxed Jinja environment that offers what transformers
offers templates (``raise_exception``, ``strftime_now``, a JSON-faithful ``tojson``, the
``{% generation %}`` tag, ``namespace``, the special-token names), so the prompt is the same
string ``apply_chat_template`` would build. :func:`parse_response` is the inverse for the
model's side.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from os import PathLike
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .config import load_json
from .errors import Gemma4Error

TEMPLATE_FILE = "chat_template.jinja"
TEMPLATE_JSON_FILE = "chat_template.json"
CONFIG_FILE = "tokenizer_config.json"

TURN_END = "<turn|>"
EOS = "<eos>"
CHANNEL_OPEN = "<|channel>"
CHANNEL_CLOSE = "<channel|>"
THOUGHT_HEADER = "thought\n"

# The special-token names transformers hands every template (its `special_tokens_map`).
_SPECIAL_TOKEN_KEYS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)
# Reasoning may arrive under any of these names; templates read the first (transformers fills it).
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


class ChatTemplateError(Gemma4Error, ValueError):
    """A conversation cannot be rendered: malformed messages or a template that failed."""


@dataclass(frozen=True)
class Response:
    """A model reply split at Gemma 4's thought channel.

    ``thinking`` is None when the reply has no thought channel or an empty one (the
    ``<|channel>thought\n<channel|>`` prefill some Gemma 4 templates write when thinking is off),
    matching transformers' Gemma 4 response parser, which drops an empty reasoning field.
    """

    thinking: str | None
    answer: str


class _GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: transformers marks assistant text with it.

    We only render, so the tag just outputs its body; templates that use it still load.
    """

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    @staticmethod
    def _body(caller: Any) -> str:
        return caller()


class _SafeNamespace(jinja2.utils.Namespace):
    """Jinja's ``namespace()`` without underscore attributes, which reach interpreter internals."""

    def __init__(*args: Any, **kwargs: Any) -> None:  # self comes in *args, as in Namespace
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _SafeNamespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _SafeNamespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"templates may not set underscore attribute {name!r} on a namespace"
            )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's own tojson escapes <, >, & and ' for HTML; chat prompts need the plain JSON text.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _make_dict(*args: Any, **kwargs: Any) -> dict[Any, Any]:
    return dict(*args, **kwargs)


def _environment() -> ImmutableSandboxedEnvironment:
    # Same switches as transformers, so whitespace comes out identical for Hub templates.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _make_dict
    env.globals["namespace"] = _SafeNamespace
    return env


class ChatTemplate:
    """A compiled chat template plus the special-token names it may refer to."""

    def __init__(
        self,
        source: str,
        special_tokens: Mapping[str, str] | None = None,
        origin: str = "<string>",
    ) -> None:
        self.source = source
        self.origin = origin
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = _environment().from_string(source)
        except jinja2.exceptions.TemplateSyntaxError as exc:
            raise ChatTemplateError(
                f"{origin}: Jinja syntax error on line {exc.lineno}: {exc.message}"
            ) from exc

    @classmethod
    def from_dir(cls, path: str | Path) -> ChatTemplate | None:
        """The template of a tokenizer/checkpoint directory, or None if it has none.

        Looked up as transformers does: ``chat_template.jinja``, then ``chat_template.json``
        (processor format), then the ``chat_template`` key of ``tokenizer_config.json``. The
        special-token names come from ``tokenizer_config.json``.
        """
        directory = Path(path)
        config = load_json(directory / CONFIG_FILE, missing_ok=True)
        special = _special_tokens(config)
        jinja_file = directory / TEMPLATE_FILE
        if jinja_file.is_file():
            return cls(jinja_file.read_text(encoding="utf-8"), special, str(jinja_file))
        json_file = directory / TEMPLATE_JSON_FILE
        if json_file.is_file():
            source = _pick_template(
                load_json(json_file, missing_ok=True).get("chat_template"), json_file
            )
            if source is not None:
                return cls(source, special, str(json_file))
        source = _pick_template(config.get("chat_template"), directory / CONFIG_FILE)
        if source is not None:
            return cls(source, special, f"{directory / CONFIG_FILE}:chat_template")
        return None

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool = True,
        enable_thinking: bool = False,
        **extra: Any,
    ) -> str:
        """The prompt text for ``messages``, as ``apply_chat_template(..., tokenize=False)``.

        ``extra`` reaches the template as variables (``tools``, ``documents``, anything a
        template reads); it overrides the special-token names. The result starts with
        ``<bos>`` -- encode it without adding another.
        """
        chat = _normalize(messages)
        variables: dict[str, Any] = {
            **self.special_tokens,
            "tools": None,
            "documents": None,
            **extra,
            "messages": chat,
            "add_generation_prompt": add_generation_prompt,
            "enable_thinking": enable_thinking,
        }
        try:
            return self._template.render(**variables)
        except jinja2.exceptions.TemplateError as exc:
            raise ChatTemplateError(f"{self.origin}: {exc}") from exc

    @staticmethod
    def parse_response(text: str) -> Response:
        """See :func:`parse_response`."""
        return parse_response(text)

    def __repr__(self) -> str:
        return f"ChatTemplate({self.origin!r})"


def parse_response(text: str) -> Response:
    """Split generated text into Gemma 4's thought channel and the answer.

    The reply ends at the first ``<turn|>`` or ``<eos>`` (anything after it is not part of the
    turn). A ``<|channel>thought\\n...<channel|>`` block becomes ``thinking``; the text around it
    is the answer. If generation stopped inside the channel (no ``<channel|>``), everything after
    the header is thinking and the answer is "". Both are stripped of surrounding whitespace, as
    Gemma 4's template trims turn content; an empty thought gives ``thinking=None``.
    """
    if not isinstance(text, str):
        raise ChatTemplateError(f"parse_response() takes a str, got {type(text).__name__}")
    end = min((i for i in (text.find(TURN_END), text.find(EOS)) if i >= 0), default=len(text))
    text = text[:end]
    start = text.find(CHANNEL_OPEN)
    if start < 0:
        return Response(thinking=None, answer=text.strip())
    before = text[:start]
    channel = text[start + len(CHANNEL_OPEN) :]
    # The channel name line is "thought"; tolerate its absence rather than eat real text.
    if channel.startswith(THOUGHT_HEADER):
        channel = channel[len(THOUGHT_HEADER) :]
    close = channel.find(CHANNEL_CLOSE)
    if close < 0:
        return Response(thinking=channel.strip() or None, answer=before.strip())
    thinking = channel[:close].strip()
    after = channel[close + len(CHANNEL_CLOSE) :]
    return Response(thinking=thinking or None, answer=(before + after).strip())


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _normalize(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Validate the conversation and shape it as transformers hands it to templates.

    Keys whose value is None are dropped (OpenAI-style ``content=None``), and reasoning given as
    ``thinking``/``reasoning`` is also exposed as ``reasoning_content`` (and vice versa).
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ChatTemplateError(f"messages must be a list of dicts, got {type(messages).__name__}")
    if len(messages) == 0:
        raise ChatTemplateError("messages is empty; a conversation needs at least one message")
    chat: list[dict[str, Any]] = []
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise ChatTemplateError(f"{where} must be a dict, got {type(message).__name__}")
        role = message.get("role")
        if role is None:
            raise ChatTemplateError(f"{where} has no 'role' field (e.g. 'user' or 'assistant')")
        if not isinstance(role, str):
            raise ChatTemplateError(f"{where}['role'] must be a str, got {type(role).__name__}")
        _check_content(message.get("content"), f"{where}['content']")
        clean = {key: value for key, value in message.items() if value is not None}
        reasoning = next((clean[key] for key in _REASONING_KEYS if key in clean), None)
        if reasoning is not None:
            clean = {"thinking": reasoning, **clean, "reasoning_content": reasoning}
        chat.append(clean)
    return chat


def _check_content(content: Any, where: str) -> None:
    if content is None or isinstance(content, str):
        return
    if isinstance(content, Mapping) or not isinstance(content, Sequence):
        raise ChatTemplateError(
            f"{where} must be a str or a list of items, got {type(content).__name__}"
        )
    for index, item in enumerate(content):
        item_where = f"{where}[{index}]"
        if not isinstance(item, Mapping):
            raise ChatTemplateError(f"{item_where} must be a dict, got {type(item).__name__}")
        kind = item.get("type")
        if not isinstance(kind, str):
            raise ChatTemplateError(
                f"{item_where} has no 'type' field (e.g. 'text', 'image' or 'audio')"
            )
        if kind == "text" and not isinstance(item.get("text"), str):
            raise ChatTemplateError(f"{item_where} is a text item without a str 'text' field")


def _pick_template(value: Any, where: Path) -> str | None:
    """A template string; older configs hold a list of named templates, of which 'default' wins."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {
            entry.get("name"): entry.get("template") for entry in value if isinstance(entry, dict)
        }
        chosen = named.get("default")
        if isinstance(chosen, str):
            return chosen
    raise ChatTemplateError(f"{where}: 'chat_template' is neither a string nor named templates")


def _special_tokens(config: Mapping[str, Any]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for key in _SPECIAL_TOKEN_KEYS:
        value = config.get(key)
        if isinstance(value, Mapping):  # an AddedToken written out as a dict
            value = value.get("content")
        if isinstance(value, str):
            tokens[key] = value
    return tokens


_MEDIA_HINTS = {
    "image": "a PIL image, a uint8 [H, W, 3] array or a file path",
    "audio": "a float array of samples (with 'sampling_rate'), or a WAV file path",
    "video": "a list of PIL images or a uint8 [F, H, W, 3] array of frames (with 'fps')",
}


def media_in(messages: Sequence[Mapping[str, Any]], kind: str) -> list[Any]:
    """What a conversation's `{"type": kind}` content items hold, in prompt order.

    `kind` is "image", "audio" or "video". An item holds its content under its kind's key (for
    "image", a PIL image, a uint8 array or a file path), or a local file under `"path"` or
    `"url"`, as transformers' processors accept. An audio array comes back as
    `(samples, sampling_rate)` (16 kHz when the item names no `"sampling_rate"`), a video as
    `(frames, fps)` (fps None when the item names none).
    """
    found: list[Any] = []
    for m, message in enumerate(messages):
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, (str, bytes)) or not isinstance(content, Sequence):
            continue
        for i, item in enumerate(content):
            if not isinstance(item, Mapping) or item.get("type") != kind:
                continue
            where = f"messages[{m}]['content'][{i}]"
            value = next((item[k] for k in (kind, "path", "url") if item.get(k) is not None), None)
            if value is None:
                raise ChatTemplateError(
                    f"{where} is a{'n' if kind[0] in 'aei' else ''} {kind} item without its "
                    f"{kind}; add '{kind}': {_MEDIA_HINTS[kind]}."
                )
            if isinstance(value, str) and value.startswith(("http://", "https://")):
                raise ChatTemplateError(
                    f"{where} names a URL ({value}); this package reads local files only. "
                    f"Download the {kind} and pass its path."
                )
            if kind == "audio" and not isinstance(value, (str, PathLike)):
                value = (value, int(item.get("sampling_rate", 16_000)))
            elif kind == "video":
                value = (value, item.get("fps"))
            found.append(value)
    return found
