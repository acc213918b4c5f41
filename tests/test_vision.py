"""Images: live parity of the processor, the vision tower and the merged prompt with transformers.

The checkpoints are ``vision_models.VISION_VARIANTS`` (an E2B-like one with clipped linears, a
31B-like one with ``standardize`` and the bidirectional image mask), made and fully randomised
by transformers; the images are drawn with NumPy and pillow. The checks:

* the processor gives transformers' ``Gemma4ImageProcessorPil`` sizes, soft-token counts, pixel
  values and positions exactly, over image shapes and every token budget;
* the soft tokens (and the tower's output before ``embed_vision``) agree within 1e-4 relative;
* prefill logits of a prompt holding two images agree within 1e-4 relative, and 40 greedy
  tokens (``generate`` with PIL images, which expands the placeholders itself) are equal; so
  are the per-step logits through our KV cache;
* the bidirectional mask equals ``create_masks_for_vision_model``'s; the text attention kernel
  with image blocks, and the tower's own Numba attention, equal the NumPy reference;
* chat, the CLI and bad input (corrupt, transparent and 16-bit images, placeholder counts).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from vision_models import (
    BOI_ID,
    EOI_ID,
    IMAGE_ID,
    MAX_NEW_TOKENS,
    MAX_SOFT_TOKENS,
    VISION_VARIANTS,
    VisionStore,
    padded,
    prompt_ids,
    test_image,
    test_images,
)

import gemma4_ref
from gemma4_ref import InputError
from gemma4_ref.attention import attention, attention_ref, visible
from gemma4_ref.chat import ChatTemplateError
from gemma4_ref.cli import main
from gemma4_ref.image import SUPPORTED_SOFT_TOKENS, process_image
from gemma4_ref.multimodal import (
    PlaceholderIds,
    expand_placeholders,
    vision_block_bounds,
    wrapped,
)
from gemma4_ref.vision import full_attention

REL_TOL = 1e-4
NAMES = sorted(VISION_VARIANTS)


@pytest.fixture(scope="session")
def vision(tmp_path_factory: pytest.TempPathFactory) -> VisionStore:
    return VisionStore(tmp_path_factory.mktemp("vision_gemma4"))


def _rel(ours: np.ndarray, ref: np.ndarray) -> float:
    assert ours.shape == ref.shape, f"shape {ours.shape} != reference {ref.shape}"
    return float(np.abs(ours.astype(np.float64) - ref).max() / np.abs(ref).max())


# --------------------------------------------------------------------------------------------
# the fixtures themselves
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_fixture_is_random_and_informative(vision, name):
    """Every tower tensor is random, clip bounds clamp, and the reference run is informative."""
    from safetensors.torch import load_file

    tensors = {}
    for f in vision.path(name).glob("*.safetensors"):
        tensors.update(load_file(f))
    tower = {k: t.float() for k, t in tensors.items() if "vision" in k}
    assert any(k.startswith("model.embed_vision.") for k in tower)
    for k, t in tower.items():
        if t.numel() > 1:
            assert t.min() < t.max(), f"{k} is constant"
        else:
            assert float(t) not in (0.0, 1.0) and np.isfinite(float(t)), f"{k} = {float(t)}"
    r = vision.reference(name)
    assert len(r.tokens) == MAX_NEW_TOKENS and len(set(r.tokens)) >= 16, r.tokens
    assert r.min_gap > 1e-3, f"near-tie in the greedy run ({r.min_gap:.2e})"
    if VISION_VARIANTS[name].vision["use_clipped_linears"]:
        # every clippable linear clamps some inputs or outputs, and many of both are clamped
        assert len(r.clipped) == 7 * 2 and all(a + b > 0 for a, b in r.clipped.values())
        assert sum(a for a, _ in r.clipped.values()) > 1000
        assert sum(b for _, b in r.clipped.values()) > 1000
    else:
        assert not r.clipped
    # the image mask matters where the config asks for it, and only there
    change = _rel(r.causal_logits, r.prefill_logits)
    if VISION_VARIANTS[name].text.get("use_bidirectional_attention") == "vision":
        assert change > 100 * REL_TOL
    else:
        assert change == 0.0


# --------------------------------------------------------------------------------------------
# the image processor
# --------------------------------------------------------------------------------------------

SHAPES = [(200, 130), (100, 100), (640, 480), (4000, 3000), (37, 1999), (1000, 3), (1, 1)]


@pytest.mark.parametrize("budget", SUPPORTED_SOFT_TOKENS)
@pytest.mark.parametrize("width,height", SHAPES)
def test_processor_matches_transformers(width, height, budget):
    """Resize size, soft-token count, pixel values and positions equal transformers' (exactly)."""
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    image = test_image(max(width, 64), max(height, 64), seed=3).resize((width, height))
    ref = Gemma4ImageProcessorPil(max_soft_tokens=budget)(image, return_tensors="np")
    ours = process_image(image, budget)
    n = len(ours.patches)
    assert ours.num_soft_tokens == ref["num_soft_tokens_per_image"][0] == n // 9
    assert ours.num_soft_tokens <= budget
    h, w = ours.size
    assert h % 48 == 0 and w % 48 == 0 and (h // 16) * (w // 16) == n
    pixels, positions = ref["pixel_values"][0], ref["image_position_ids"][0]
    np.testing.assert_array_equal(ours.patches, pixels[:n])
    np.testing.assert_array_equal(ours.positions, positions[:n])
    assert (pixels[n:] == 0).all() and (positions[n:] == -1).all()  # the rest is padding
    assert positions[:n, 0].max() + 1 == w // 16 and positions[:n, 1].max() + 1 == h // 16


@pytest.mark.parametrize("mode", ["L", "P", "CMYK"])
def test_processor_converts_other_modes_like_transformers(mode):
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    image = test_image(120, 90, seed=4).convert(mode)
    ref = Gemma4ImageProcessorPil(max_soft_tokens=70)(image, return_tensors="np")
    ours = process_image(image, 70)
    np.testing.assert_array_equal(ours.patches, ref["pixel_values"][0][: len(ours.patches)])


def test_processor_takes_paths_and_arrays(tmp_path):
    image = test_image(150, 100, seed=5)
    image.save(tmp_path / "a.png")
    direct = process_image(image, 70)
    for source in (tmp_path / "a.png", str(tmp_path / "a.png"), np.asarray(image)):
        np.testing.assert_array_equal(process_image(source, 70).patches, direct.patches)


def test_expand_images_writes_processor_blocks(vision):
    """Our id-level expansion tokenizes like transformers' `replace_image_token` text."""
    from types import SimpleNamespace

    from transformers.models.gemma4.processing_gemma4 import Gemma4Processor

    model = vision.ours("e2b-vision")
    tok = model.tokenizer
    names = SimpleNamespace(boi_token="<|image>", image_token="<|image|>", eoi_token="<image|>")
    counts = {"num_soft_tokens_per_image": [60, 64]}
    blocks = [Gemma4Processor.replace_image_token(names, counts, i) for i in range(2)]
    short = tok.encode("<bos>Look at <|image|> and <|image|> now")
    expected = tok.encode(f"<bos>Look at {blocks[0]} and {blocks[1]} now")
    t = model.placeholders
    runs = [wrapped(t.boi, t.image, n, t.eoi) for n in (60, 64)]
    expanded = expand_placeholders(short, runs, t.image)
    assert expanded.tolist() == expected
    assert (expanded == IMAGE_ID).sum() == 124 and short.count(IMAGE_ID) == 2
    runs = [wrapped(BOI_ID, IMAGE_ID, n, EOI_ID) for n in (60, 64)]
    expanded = expand_placeholders(prompt_ids(), runs, IMAGE_ID)
    assert expanded.tolist() == prompt_ids([60, 64])


# --------------------------------------------------------------------------------------------
# the tower and the merged prompt
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_soft_tokens(vision, name):
    """Each image's soft tokens (and the pooled features before embed_vision)."""
    r = vision.reference(name)
    model = vision.ours(name)
    processed = vision.processed()
    ours = model.image_features(processed)
    for i, (o, ref) in enumerate(zip(ours, r.soft_tokens, strict=True)):
        rel = _rel(o, ref)
        print(f"{name}: image {i} soft tokens {o.shape}: relative {rel:.2e}")
        assert rel <= REL_TOL
    features = np.concatenate([model.vision.encode(p.patches, p.positions) for p in processed])
    assert _rel(features, r.features) <= REL_TOL
    # the padded form transformers takes gives the same tokens
    pixels, positions = padded(processed[:1], MAX_SOFT_TOKENS * 9)
    np.testing.assert_array_equal(model.vision(pixels[0], positions[0]), ours[0])


@pytest.mark.parametrize("name", NAMES)
def test_prefill_logits(vision, name):
    r = vision.reference(name)
    ours = vision.ours(name).forward(r.ids, images=vision.processed())
    rel = _rel(ours, r.prefill_logits)
    print(f"{name}: prefill logits ({len(r.ids)} positions, two images): relative {rel:.2e}")
    assert rel <= REL_TOL


@pytest.mark.parametrize("name", NAMES)
def test_greedy_generation(vision, name):
    """40 greedy tokens from PIL images and the short prompt (one <|image|> per image)."""
    r = vision.reference(name)
    ours = vision.ours(name).generate(
        prompt_ids(),
        max_new_tokens=MAX_NEW_TOKENS,
        temperature=0.0,
        images=test_images(),
        max_soft_tokens=MAX_SOFT_TOKENS,
    )
    assert [int(t) for t in ours] == r.tokens


@pytest.mark.parametrize("name", NAMES)
def test_step_logits_through_cache(vision, name):
    model = vision.ours(name)
    r = vision.reference(name)
    cache = model.new_cache()
    rows = [model.step(r.ids, cache, images=vision.processed())[-1]]
    for token in r.tokens[:-1]:
        rows.append(model.step([token], cache)[-1])
    rel = _rel(np.stack(rows), r.step_logits)
    print(f"{name}: per-step logits through the cache: relative {rel:.2e}")
    assert rel <= REL_TOL


# --------------------------------------------------------------------------------------------
# the mask and its kernel
# --------------------------------------------------------------------------------------------

MASK_IDS = np.array([2, 9, 5, 6, 6, 6, 6, 6, 6, 7, 9, 5, 6, 6, 7, 6, 9, 9, 5, 6, 6, 6, 7])


@pytest.mark.parametrize("window", [3, 4, 100])
def test_image_mask_matches_transformers(window):
    """Sliding layers: (causal OR same block) AND window; global layers: causal."""
    import transformers
    from transformers.models.gemma4.modeling_gemma4 import (
        create_masks_for_vision_model,
        get_block_sequence_ids_for_mask,
    )

    cfg = transformers.Gemma4TextConfig(
        sliding_window=window,
        hidden_size=8,
        num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"],
    )
    cfg._attn_implementation = "eager"
    S = len(MASK_IDS)
    blocks = get_block_sequence_ids_for_mask(torch.from_numpy(MASK_IDS == IMAGE_ID)[None], "cpu")
    masks = create_masks_for_vision_model(
        cfg, torch.zeros(1, S, 8), None, None, torch.arange(S)[None], blocks
    )
    pos = np.arange(S)
    _, q_last = vision_block_bounds(pos, MASK_IDS, PlaceholderIds(BOI_ID, IMAGE_ID, EOI_ID))
    np.testing.assert_array_equal(
        visible(pos, pos, window, q_last), masks["sliding_attention"][0, 0].numpy() == 0
    )
    np.testing.assert_array_equal(visible(pos, pos, 0), masks["full_attention"][0, 0].numpy() == 0)


@pytest.mark.parametrize("window", [0, 4])
def test_attention_kernel_with_image_blocks(window):
    """The Numba kernel equals the NumPy reference with image blocks (max diff 1e-5 relative)."""
    rng = np.random.default_rng(0)
    S, nH, nKV, D = len(MASK_IDS), 4, 2, 16
    q = rng.standard_normal((S, nH, D), dtype=np.float32)
    k = rng.standard_normal((S, nKV, D), dtype=np.float32)
    v = rng.standard_normal((S, nKV, D), dtype=np.float32)
    pos = np.arange(S)
    _, q_last = vision_block_bounds(pos, MASK_IDS, PlaceholderIds(BOI_ID, IMAGE_ID, EOI_ID))
    ref = attention_ref(q, k, v, pos, pos, window, q_last)
    np.testing.assert_allclose(
        attention(q, k, v, pos, pos, window, q_last), ref, rtol=1e-5, atol=1e-5
    )
    assert not np.allclose(ref, attention_ref(q, k, v, pos, pos, window), atol=1e-3)


@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_full_attention_kernel(n_kv):
    """The tower's Numba attention equals the NumPy reference opened to every patch (GQA too)."""
    rng = np.random.default_rng(n_kv)
    N, nH, D = 97, 4, 16
    q = rng.standard_normal((N, nH, D), dtype=np.float32)
    k = rng.standard_normal((N, n_kv, D), dtype=np.float32)
    v = rng.standard_normal((N, n_kv, D), dtype=np.float32)
    pos = np.arange(N)
    ref = attention_ref(q, k, v, pos, pos, 0, np.full(N, N - 1))
    np.testing.assert_allclose(full_attention(q, k, v), ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# chat and the command line
# --------------------------------------------------------------------------------------------


def test_chat_with_images(vision, tmp_path):
    """chat() takes PIL images and paths in content items and answers as generate() does."""
    model = vision.ours("e2b-vision")
    first, second = test_images()
    second.save(tmp_path / "second.png")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "image", "image": first},
                {"type": "text", "text": "What is in these?"},
                {"type": "image", "path": str(tmp_path / "second.png")},
            ],
        }
    ]
    prompt = model.render_chat(messages)
    ids = model.tokenizer.encode(prompt)
    assert ids.count(IMAGE_ID) == 2
    expected = model.generate(
        ids, max_new_tokens=8, temperature=0.0, images=[first, second], max_soft_tokens=70
    )
    reply = model.chat(messages, max_new_tokens=8, temperature=0.0, max_soft_tokens=70)
    assert reply.answer == model.tokenizer.decode(expected).split("<turn|>")[0].strip()


def test_cli_takes_images(vision, tmp_path, capsys):
    path = str(vision.path("e2b-vision"))
    test_images()[0].save(tmp_path / "a.png")
    args = ["--model", path, "--image", str(tmp_path / "a.png"), "--max-new-tokens", "4"]
    assert main(["generate", "--prompt", "Look:", "--temperature", "0", *args]) == 0
    assert capsys.readouterr().out.startswith("Look:")
    assert main(["chat", "--message", "What is it?", "--temperature", "0", *args]) == 0
    assert capsys.readouterr().out.startswith("> What is it?\n")


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def test_corrupt_image_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    with pytest.raises(InputError, match=r"broken\.png is corrupt.*Re-export"):
        process_image(bad)
    with pytest.raises(InputError, match=r"missing\.png does not exist"):
        process_image(tmp_path / "missing.png")


def test_transparent_and_16_bit_images(tmp_path):
    rgba = test_image(64, 64, seed=6).convert("RGBA")
    with pytest.raises(InputError, match=r"alpha channel \(mode RGBA\).*alpha_composite"):
        process_image(rgba)
    rgba.save(tmp_path / "rgba.png")
    with pytest.raises(InputError, match=r"rgba\.png has an alpha channel"):
        process_image(tmp_path / "rgba.png")
    deep = Image.fromarray(np.full((64, 64), 40000, np.uint16))
    deep.save(tmp_path / "deep.png")
    with pytest.raises(InputError, match=r"deep\.png has 'I;16' pixels \(16-bit.*8-bit"):
        process_image(tmp_path / "deep.png")
    with pytest.raises(InputError, match=r"dtype uint16.*uint8"):
        process_image(np.zeros((64, 64, 3), np.uint16))
    with pytest.raises(InputError, match=r"shape \[64, 64, 4\].*RGBA"):
        process_image(np.zeros((64, 64, 4), np.uint8))
    with pytest.raises(InputError, match=r"max_soft_tokens=100 is not supported"):
        process_image(test_image(64, 64, seed=6), 100)


def test_placeholder_counts(vision):
    model = vision.ours("e2b-vision")
    images = test_images()
    with pytest.raises(InputError, match=r"holds 2 image placeholder\(s\).*but 1 image"):
        model.generate(prompt_ids(), max_new_tokens=1, images=images[:1])
    with pytest.raises(InputError, match=r"holds 2 image placeholder\(s\).*but 0 image"):
        model.generate(prompt_ids(), max_new_tokens=1)
    with pytest.raises(InputError, match=r"ids hold 124 image soft-token placeholders.*make 60"):
        model.forward(prompt_ids([60, 64]), images=images[:1], max_soft_tokens=70)
    with pytest.raises(InputError, match=r"images must be a list"):
        model.forward(prompt_ids([60, 64]), images=images[0])
    with pytest.raises(ChatTemplateError, match=r"messages\[0\]\['content'\]\[0\] is an image"):
        model.chat([{"role": "user", "content": [{"type": "image"}]}])


def test_text_model_refuses_images():
    model = gemma4_ref.load_model()
    with pytest.raises(InputError, match=r"config\.json describes no encoder for images"):
        model.generate([2, 100], images=[test_image(64, 64, seed=7)])
