"""Build, load and save causal LMs.

`build_tiny_model` makes the embedded default: a small Qwen3-architecture model from a
config, with a tokenizer trained on the world. `load_model` takes any Hugging Face causal LM
directory or hub id (a hub id needs network; tests use local paths).
"""

from __future__ import annotations

import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

from stagent_ray.config import ModelConfig, WorldConfig

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def tiny_model_config(cfg: ModelConfig, vocab_size: int, eos_id: int, pad_id: int) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=vocab_size, hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.hidden_size // cfg.num_heads, max_position_embeddings=cfg.max_seq_len,
        tie_word_embeddings=True, eos_token_id=eos_id, pad_token_id=pad_id,
        bos_token_id=None, rope_theta=10000.0)


def build_tiny_model(cfg: ModelConfig, tokenizer, seed: int = 0):
    torch.manual_seed(seed)
    config = tiny_model_config(cfg, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id)
    model = Qwen3ForCausalLM(config).to(DTYPES[cfg.dtype])
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_base_checkpoint(out_dir: str, model_cfg: ModelConfig, world_cfg: WorldConfig,
                          seed: int = 0) -> str:
    """Write a fresh tiny model + world tokenizer to `out_dir` (HF format); return the path."""
    from stagent_ray.models.tokenizer import train_tokenizer, world_corpus

    texts = world_corpus(world_cfg.seed, world_cfg.n_cities, world_cfg.pois_per_city,
                         world_cfg.today)
    tokenizer = train_tokenizer(texts, model_cfg.vocab_size)
    model = build_tiny_model(model_cfg, tokenizer, seed)
    save_checkpoint(model, tokenizer, out_dir)
    return out_dir


def save_checkpoint(model, tokenizer, out_dir: str) -> None:
    """Save in Hugging Face format; write into a temp dir then rename so a crash never
    leaves a half-written checkpoint that looks complete."""
    tmp = out_dir.rstrip("/") + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if os.path.exists(out_dir):
        import shutil
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)


def load_tokenizer(path: str):
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "float32", device: str = "cpu"):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
    return model.to(device).eval()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
