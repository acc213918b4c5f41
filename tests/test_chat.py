"""gemma4_ref.chat against transformers: apply_chat_template for rendering, and transformers'
Gemma 4 response parser for parse_response."""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import pytest

from gemma4_ref.chat import ChatTemplate, ChatTemplateError, Response, parse_response
from gemma4_ref.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = REPO_ROOT / "data" / "tokenizer"

CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Who is Hamlet?"}],
    "system_and_user": [
        {"role": "system", "content": "  You answer in one line.\n"},
        {"role": "user", "content": "Who is Hamlet?"},
    ],
    "multi_turn_with_thinking_history": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Who is Hamlet?"},
        {
            "role": "assistant",
            "content": "<|channel>thought\nThe prince.<channel|>The Prince of Denmark.",
        },
        {"role": "user", "content": "  And Ophelia?  "},
        {"role": "assistant", "content": "Polonius's daughter.\n"},
        {"role": "user", "content": "Thanks."},
    ],
    "no_system_multi_turn": [
        {"role": "user", "content": "Hi"},
        {"role": "model", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ],
    "content_items": [
        {"role": "developer", "content": [{"type": "text", "text": "Describe things."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in "},
                {"type": "image", "url": "x.png"},
                {"type": "text", "text": " and "},
                {"type": "audio", "path": "y.wav"},
                {"type": "text", "text": "?"},
            ],
        },
        {"role": "assistant", "content": None, "reasoning_content": "dropped"},
    ],
}

GEMMA4_SCHEMA_KEY = "gemma4"


@pytest.fixture(scope="module")
def hf():
    return transformers.AutoTokenizer.from_pretrained(TOKENIZER_DIR)


@pytest.fixture(scope="module")
def template() -> ChatTemplate:
    loaded = ChatTemplate.from_dir(TOKENIZER_DIR)
    assert loaded is not None
    return loaded


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("enable_thinking", [False, True])
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_render_matches_apply_chat_template(
    hf, template, name, enable_thinking, add_generation_prompt
):
    messages = CONVERSATIONS[name]
    expected = hf.apply_chat_template(
        messages,
        tokenize=False,
        add_generation_prompt=add_generation_prompt,
        enable_thinking=enable_thinking,
    )
    got = template.render(
        messages, add_generation_prompt=add_generation_prompt, enable_thinking=enable_thinking
    )
    assert got == expected


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_plain_jinja2_renders_the_same(hf, template, name):
    messages = CONVERSATIONS[name]
    expected = hf.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=True
    )
    plain = jinja2.Environment().from_string(template.source)
    # transformers drops None-valued keys; do the same for the plain render.
    cleaned = [{k: v for k, v in m.items() if v is not None} for m in messages]
    assert plain.render(messages=cleaned, add_generation_prompt=True, enable_thinking=True) == (
        expected
    )


def test_rendered_prompt_tokenizes_like_transformers(hf, template):
    messages = CONVERSATIONS["multi_turn_with_thinking_history"]
    expected = hf.apply_chat_template(
        messages, tokenize=True, add_generation_prompt=True, return_dict=False
    )
    ids = Tokenizer.from_dir(TOKENIZER_DIR).encode(template.render(messages))
    assert ids == expected
    assert ids[0] == hf.bos_token_id and ids.count(hf.bos_token_id) == 1
    opener = hf.encode("<|turn>model\n", add_special_tokens=False)
    assert ids[-len(opener) :] == opener


def test_shape_of_a_thinking_prompt(template):
    # The Gemma 4 turn format, spelled out once.
    text = template.render(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        enable_thinking=True,
    )
    assert text == (
        "<bos><|turn>system\n<|think|>\nS<turn|>\n<|turn>user\nU<turn|>\n<|turn>model\n"
    )


# A template exercising what Hub templates use: namespace, tojson, strftime_now, the generation
# tag, loop controls, special-token variables and extra keyword arguments.
FEATURE_TEMPLATE = (
    "{{ bos_token }}{% set ns = namespace(n=0) %}"
    "{% for m in messages %}{% if m.role == 'skip' %}{% continue %}{% endif %}"
    "{% set ns.n = ns.n + 1 %}[{{ m.role }}:{{ m.content | tojson }}]"
    "{% if m.role == 'assistant' %}{% generation %}<{{ m.content }}>{% endgeneration %}{% endif %}"
    "{% endfor %}\n  {{ ns.n }} {{ eos_token }} {{ pad_token }} {{ custom | tojson(indent=1) }}"
    " {{ strftime_now('%Y') | length }}{{ dict(a=1) | tojson }}"
    "{% if add_generation_prompt %}<gen>{% endif %}"
)


def test_environment_matches_transformers(hf, tmp_path):
    messages = [
        {"role": "user", "content": 'Quotes " and <tags> & ünïcode'},
        {"role": "skip", "content": "x"},
        {"role": "assistant", "content": "ok"},
    ]
    extra = {"custom": {"k": [1, 2]}}
    expected = hf.apply_chat_template(
        messages,
        chat_template=FEATURE_TEMPLATE,
        tokenize=False,
        add_generation_prompt=True,
        **extra,
    )
    config = {
        "bos_token": "<bos>",
        "eos_token": {"content": "<eos>"},
        "pad_token": "<pad>",
        "chat_template": FEATURE_TEMPLATE,
    }
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    loaded = ChatTemplate.from_dir(tmp_path)
    assert loaded is not None
    assert loaded.render(messages, add_generation_prompt=True, **extra) == expected


def test_from_dir_prefers_jinja_file_and_returns_none_without_template(tmp_path):
    assert ChatTemplate.from_dir(tmp_path) is None
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"chat_template": "from-config"}), encoding="utf-8"
    )
    assert ChatTemplate.from_dir(tmp_path).render([{"role": "user", "content": ""}]) == (
        "from-config"
    )
    (tmp_path / "chat_template.jinja").write_text("from-file", encoding="utf-8")
    assert ChatTemplate.from_dir(tmp_path).render([{"role": "user", "content": ""}]) == (
        "from-file"
    )


@pytest.mark.parametrize(
    ("messages", "pattern"),
    [
        ([{"content": "no role"}], r"messages\[0\] has no 'role' field"),
        (
            [{"role": "user", "content": "a"}, {"role": "assistant"}, {"text": "x"}],
            r"messages\[2\] has no 'role' field",
        ),
        ([{"role": "user", "content": 42}], r"messages\[0\]\['content'\] must be a str or a list"),
        (
            [{"role": "user", "content": [{"text": "no type"}]}],
            r"messages\[0\]\['content'\]\[0\] has no 'type' field",
        ),
        (
            [{"role": "user", "content": [{"type": "text"}]}],
            r"messages\[0\]\['content'\]\[0\] is a text item without a str 'text' field",
        ),
        ("just a string", r"messages must be a list of dicts"),
        ([], r"messages is empty"),
    ],
)
def test_malformed_messages_name_the_field(template, messages, pattern):
    with pytest.raises(ChatTemplateError, match=pattern):
        template.render(messages)


@pytest.mark.parametrize(
    ("messages", "kwargs", "pattern"),
    [
        (
            [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}],
            {},
            r"messages\[1\]: a 'system' message is only allowed first",
        ),
        ([{"role": "tool", "content": "{}"}], {}, r"role 'tool' is not supported"),
        (
            [{"role": "user", "content": [{"type": "file"}]}],
            {},
            r"content item type 'file' is not supported",
        ),
        ([{"role": "user", "content": "a"}], {"tools": [{"name": "f"}]}, r"does not support tools"),
    ],
)
def test_template_errors_match_transformers(hf, template, messages, kwargs, pattern):
    with pytest.raises(jinja2.exceptions.TemplateError, match=pattern):
        hf.apply_chat_template(messages, tokenize=False, **kwargs)
    with pytest.raises(ChatTemplateError, match=pattern):
        template.render(messages, **kwargs)


# --------------------------------------------------------------------------------------------
# parse_response, checked against transformers' Gemma 4 response parser
# --------------------------------------------------------------------------------------------

RESPONSES = [
    "The Prince of Denmark.<turn|>",
    "  spaced answer \n<turn|>",
    "<|channel>thought\nHe is the prince.<channel|>The Prince of Denmark.<turn|>",
    "<|channel>thought\n  multi\nline\nthinking  <channel|>\n\nAnswer.<eos>",
    "<|channel>thought\n<channel|>Empty thought prefill.<turn|>",
    "<|channel>thought\nGeneration was cut off here",
    "<|channel>thought\n",
    "No end marker at all",
    "",
]


@pytest.fixture(scope="module")
def gemma4_schema():
    serving = pytest.importorskip("transformers.cli.serving.utils")
    for model_types, schema in serving._RESPONSE_TEMPLATE_FALLBACKS.items():
        if GEMMA4_SCHEMA_KEY in model_types:
            return schema
    pytest.skip("transformers has no Gemma 4 response schema")


@pytest.mark.parametrize("text", RESPONSES)
def test_parse_response_matches_transformers(hf, gemma4_schema, text):
    parsed = hf.parse_response(text, gemma4_schema, prefix="<|turn>model\n")
    expected = Response(thinking=parsed.get("reasoning_content"), answer=parsed.get("content", ""))
    assert parse_response(text) == expected
    assert ChatTemplate.parse_response(text) == expected


def test_parse_response_stops_at_end_of_turn():
    # Anything after <turn|> is outside the model's turn. (transformers' parser keeps the
    # last content region here instead, which is not an answer.)
    assert parse_response("Answer.<turn|>\n<|turn>user\nmore") == Response(None, "Answer.")
    assert parse_response("Answer.<eos><eos>") == Response(None, "Answer.")


def test_parse_response_rejects_non_text():
    with pytest.raises(ChatTemplateError, match="takes a str"):
        parse_response([1, 2, 3])  # type: ignore[arg-type]
