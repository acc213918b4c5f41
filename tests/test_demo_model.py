"""The shipped demo model (data/gemma4-tiny) is trained, and this package runs it exactly.

* Its held-out perplexity, as this package computes it, matches the figure transformers computed
  when the model was committed (`heldout_eval.json`, which records the versions), and lies far
  below the uniform baseline.
* Parity on the demo model itself: logits of a prompt longer than its sliding window agree with
  transformers (fp32, eager) within a relative 1e-4, and 64 greedy tokens are equal.
"""

import json

import numpy as np
import pytest
import torch

import gemma4_ref
from gemma4_ref.perplexity import encode_corpus, perplexity, windows

MODEL = gemma4_ref.DEFAULT_MODEL
CORPUS = MODEL.parent / "corpus" / "heldout.txt"


@pytest.fixture(scope="module")
def model():
    return gemma4_ref.load_model()


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        MODEL, dtype=torch.float32, attn_implementation="eager"
    ).eval()


@pytest.fixture(scope="module")
def heldout(model):
    return encode_corpus(model.tokenizer, CORPUS.read_text())


def test_heldout_perplexity_matches_transformers_figure(model, heldout):
    record = json.loads((MODEL / "heldout_eval.json").read_text())
    assert record["transformers"] and record["torch"]  # the figure says what made it
    batch = windows(heldout, record["seq"], record["windows"])
    ppl = perplexity(model.forward, batch)
    assert abs(ppl - record["perplexity"]) / record["perplexity"] < 1e-4, (ppl, record)
    # Trained, not random: far below guessing uniformly over the vocabulary.
    assert record["uniform_baseline"] == model.config.vocab_size
    assert ppl < model.config.vocab_size / 50


def test_demo_model_parity_with_transformers(model, reference, heldout):
    window = model.config.sliding_window
    ids = np.concatenate([[2], heldout[1000 : 1000 + 2 * window + 20]]).astype(np.int64)
    ours = model.forward(ids)
    with torch.no_grad():
        ref = reference(torch.from_numpy(ids)[None]).logits[0].numpy()
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel < 1e-4, f"max relative logit difference {rel:.2e}"

    new = model.generate(ids, max_new_tokens=64, temperature=0.0)
    with torch.no_grad():
        out = reference.generate(
            torch.from_numpy(ids)[None], max_new_tokens=64, do_sample=False, top_k=None, top_p=None
        )
    assert len(new) == 64
    assert new == out[0, len(ids) :].tolist()


def test_demo_model_has_every_idea_switched_on(model):
    cfg = model.config
    assert cfg.has_ple and cfg.num_kv_shared_layers > 0 and cfg.use_double_wide_mlp
    assert cfg.attention_k_eq_v and cfg.enable_moe_block
    assert {s.layer_type for s in cfg.layers} == {"sliding_attention", "full_attention"}
    assert cfg.rope["full_attention"].rope_type == "proportional"
