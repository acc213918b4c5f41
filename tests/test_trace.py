"""`Model.trace` shows what transformers computes inside: attention maps and expert choices."""

import numpy as np
import pytest
import torch

import gemma4_ref


@pytest.fixture(scope="module")
def both():
    from transformers import AutoModelForCausalLM

    model = gemma4_ref.load_model()
    ref = AutoModelForCausalLM.from_pretrained(
        gemma4_ref.DEFAULT_MODEL, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    text = "ROMEO.\nBut soft, what light through yonder window breaks? It is the east, and "
    ids = [2] + model.tokenizer.encode(text * 4)  # longer than the 64-token window
    assert len(ids) > model.config.sliding_window
    return model, ref, np.array(ids)


def test_attention_maps_match_transformers(both):
    model, ref, ids = both
    trace = model.trace(ids)
    with torch.no_grad():
        out = ref(torch.from_numpy(ids)[None], output_attentions=True)
    assert len(trace.attention) == len(out.attentions) == model.config.num_hidden_layers
    for i, (ours, theirs) in enumerate(zip(trace.attention, out.attentions, strict=True)):
        theirs = theirs[0].numpy()  # [nH, S, T]
        assert ours.shape == theirs.shape, i
        assert np.abs(ours - theirs).max() < 1e-4, f"layer {i}"
        if model.config.layers[i].is_sliding:  # nothing outside the window is seen
            w = model.config.sliding_window
            s = np.arange(len(ids))
            far = s[None, :] <= s[:, None] - w
            assert np.all(ours[:, far] == 0)
    np.testing.assert_allclose(trace.logits, out.logits[0].numpy(), rtol=0, atol=1e-3)


def test_expert_choices_match_transformers(both):
    model, ref, ids = both
    trace = model.trace(ids)
    seen = {}

    def hook(index):
        def record(module, args, output):
            seen[index] = output  # (probabilities, top-k weights, top-k indices)

        return record

    layers = ref.model.layers
    handles = [layer.router.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    with torch.no_grad():
        ref(torch.from_numpy(ids)[None])
    for h in handles:
        h.remove()
    for i, entry in enumerate(trace.router):
        probs, index, weights = entry
        ref_probs, ref_weights, ref_index = (t.numpy() for t in seen[i])
        np.testing.assert_array_equal(np.sort(index, 1), np.sort(ref_index, 1), err_msg=f"{i}")
        np.testing.assert_allclose(probs, ref_probs, atol=1e-5)
        order = np.argsort(index, 1), np.argsort(ref_index, 1)
        np.testing.assert_allclose(
            np.take_along_axis(weights, order[0], 1),
            np.take_along_axis(ref_weights, order[1], 1),
            atol=1e-5,
        )


def test_trace_records_every_layer(both):
    model, _, ids = both
    trace = model.trace(ids)
    L = model.config.num_hidden_layers
    assert len(trace.residual) == len(trace.ple) == len(trace.router) == L
    assert trace.per_layer_inputs.shape == (len(ids), L, model.config.hidden_size_per_layer_input)
    # Each attention row is a probability distribution.
    for probs in trace.attention:
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
