"""The transformers example: small Hugging Face models built from their configs, with random weights (nothing is
downloaded), as the factories of a user's own models look:

    pytest examples/transformers_rules.yaml                                     # all four, the packaged suite
    pytest --lrp-model=examples/transformer_models.py:llama --lrp-rules=examples/transformers_rules.yaml

For a trained model, the factory loads it instead, e.g. ``AutoModelForCausalLM.from_pretrained(folder)``.
"""

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    ViTConfig,
    ViTForImageClassification,
)


def llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def bert():
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        num_labels=3,
    )
    return BertForSequenceClassification(config)


def vit():
    torch.manual_seed(0)
    config = ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_labels=3,
    )
    return ViTForImageClassification(config)
