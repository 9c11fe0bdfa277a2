"""Build, load and save causal LMs.

`build_tiny_model` makes the embedded default: a small Qwen3-architecture model from a
`ModelConfig`, with a tokenizer trained on the world (stages/base.py puts them together).
`load_model` takes any Hugging Face causal LM directory or hub id (a hub id needs network;
tests use local paths).
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_model_config(cfg, vocab_size: int, eos_id: int, pad_id: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=True, eos_token_id=eos_id, pad_token_id=pad_id,
        bos_token_id=None, rope_theta=10000.0)


def build_tiny_model(cfg, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    config = tiny_model_config(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = Qwen3ForCausalLM(config).to(DTYPES[cfg.dtype])
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_checkpoint(model, tokenizer, out_dir: str) -> None:
    """Save in Hugging Face format; write into a temp dir then rename so a crash never
    leaves a half-written checkpoint that looks complete. A URI (s3://...) is saved to a
    local temp dir and uploaded."""
    if "://" in out_dir:
        import tempfile

        import pyarrow.fs as pafs

        from stagent_ray.runio import copy_dir
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            copy_dir(pafs.LocalFileSystem(), tmp, out_dir)
        return
    tmp = out_dir.rstrip("/") + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if os.path.exists(out_dir):
        import shutil
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def load_tokenizer(path: str):
    from stagent_ray.runio import local_model_dir  # a checkpoint on object storage

    tok = AutoTokenizer.from_pretrained(local_model_dir(path), padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "float32", device: str = "cpu"):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    return model.to(device).eval()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
