"""The architecture of the embedded demo model: a small Gemma 4 with every idea of the book on.

One place defines it, for the training script (`train/train.py`) and the book:

* Per-Layer Embeddings (64 wide per layer);
* hybrid attention, 4 sliding : 1 global, a 64-token window, p-RoPE on the global layers;
* K=V on the global layers, with their own key/value head count and a wider head;
* KV sharing over the last 4 layers, whose MLPs are double wide;
* a mixture-of-experts block beside every dense MLP: 8 experts, top 2.

About 20 million parameters: the notebooks run it in seconds on two cores.
"""

from __future__ import annotations

TOKENIZER_VOCAB = 4096

DEMO_CONFIG: dict = {
    "vocab_size": TOKENIZER_VOCAB,
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 10,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "global_head_dim": 128,
    "num_global_key_value_heads": 1,
    "attention_k_eq_v": True,
    "layer_types": (["sliding_attention"] * 4 + ["full_attention"]) * 2,
    "sliding_window": 64,
    "max_position_embeddings": 4096,
    "hidden_size_per_layer_input": 64,
    "vocab_size_per_layer_input": TOKENIZER_VOCAB,
    "num_kv_shared_layers": 4,
    "use_double_wide_mlp": True,
    "enable_moe_block": True,
    "num_experts": 8,
    "top_k_experts": 2,
    "moe_intermediate_size": 128,
    "final_logit_softcapping": 30.0,
    "rms_norm_eps": 1e-6,
    "pad_token_id": 0,
    "bos_token_id": 2,
    "eos_token_id": [1, 106],
    "tie_word_embeddings": True,
}

GENERATION_CONFIG: dict = {
    "bos_token_id": 2,
    "pad_token_id": 0,
    "eos_token_id": [1, 106, 50],
    "do_sample": True,
    "temperature": 1.0,
    "top_k": 64,
    "top_p": 0.95,
    "max_new_tokens": 128,
}
