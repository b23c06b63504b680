"""A tiny random LLaMA-architecture causal LM with its own byte-level BPE tokenizer, built
offline in about a second: the teacher of tests, smoke runs and benchmarks (no download)."""

from __future__ import annotations

from pathlib import Path

import torch

from kdsweep.lm.data import load_documents


def build_tiny_teacher(
    path: Path,
    layers: int = 4,
    hidden: int = 64,
    vocab: int = 512,
    max_positions: int = 256,
    seed: int = 0,
    texts: list[str] | None = None,
) -> Path:
    """Save a random-init LlamaForCausalLM + a BPE tokenizer trained on `texts` (default:
    2,000 fortunes) into `path`; returns `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = texts or load_documents("fortunes")[:2000]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        eos_token_id=fast.eos_token_id,
        bos_token_id=fast.eos_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    path = Path(path)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
