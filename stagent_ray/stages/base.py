"""Stage `base`: the model the cascade starts from.

A hub id or local path (`model.name_or_path`) is used as it is; a name that
`stagent-ray models` knows (`smollm2-135m`) is its converted directory, converted here if
it is not yet (models/pretrained.py). The embedded default
(`tiny`) is built here, nothing downloaded: a byte-level BPE tokenizer trained on the
world's text (tool schemas, the world itself, query texts and oracle trajectories) and a
small Qwen3-architecture model from `model:`. With `pretrain.docs` > 0 it is first trained
on synthetic world text on Ray Train (models/lm_corpus.py), as a pretrained base would be.

Outputs: ckpt/base/ (Hugging Face format; ckpt/base_init/ and data/pretrain_corpus.parquet
too when pretraining). Running it again keeps a base that exists.
"""

from __future__ import annotations

import json


def tokenizer_corpus(world_cfg) -> list[str]:
    """Texts that cover what the agent will read and write in the synthetic world."""
    from stagent_ray.models.chat_format import (DEFAULT_SYSTEM_PROMPT, compact_tool_schemas,
                                                tools_system_block)
    from stagent_ray.models.tokenizer import SYNTAX_LINES
    from stagent_ray.tasks.families import FAMILIES, generate_queries
    from stagent_ray.tasks.oracle import run_oracle
    from stagent_ray.world.backends import make_executor
    from stagent_ray.world.generate import load_world

    w = world_cfg
    world = load_world(w.seed, w.n_cities, w.pois_per_city, w.today)
    executor = make_executor(seed=w.seed, n_cities=w.n_cities, pois_per_city=w.pois_per_city,
                             today=w.today)
    texts = [DEFAULT_SYSTEM_PROMPT, tools_system_block(executor.schemas()),
             tools_system_block(compact_tool_schemas(executor.schemas()))]
    texts += [json.dumps(s) for s in executor.schemas()]
    texts.append(world.to_json())
    for family in FAMILIES:  # query texts and oracle trajectories
        for q in generate_queries(world, family, 3, seed=w.seed):
            texts.append(q.text)
            texts += [m["content"] for m in run_oracle(q, executor, noise=0.0)]
    return texts + SYNTAX_LINES


def build_base_checkpoint(out_dir: str, model_cfg, world_cfg, seed: int = 0) -> str:
    """Write a fresh tiny model + world tokenizer to `out_dir` (HF format); return the path."""
    from stagent_ray.models.build import build_tiny_model, save_checkpoint
    from stagent_ray.models.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(tokenizer_corpus(world_cfg), model_cfg.vocab_size)
    save_checkpoint(build_tiny_model(model_cfg, tokenizer, seed), tokenizer, out_dir)
    return out_dir


def with_project_markers(src: str, out_dir: str) -> bool:
    """A model whose tokenizer has no chat template and no `<|im_end|>` token (a base model,
    not an instruct one) cannot stop a turn in the project's format. Add the format's markers
    as special tokens, resize the embeddings (new rows start at the mean of the old ones),
    and save the result to `out_dir` (later checkpoints keep the tokens). True when it did."""
    import warnings

    from stagent_ray.models.build import load_model, load_tokenizer, save_checkpoint
    from stagent_ray.models.chat_format import IM_END, PROJECT_TEMPLATE, SPECIAL_TOKENS
    from stagent_ray.models.formats import single_token
    from stagent_ray.train.common import local_model_dir

    tokenizer = load_tokenizer(src)
    if tokenizer.chat_template or single_token(tokenizer, IM_END) is not None:
        return False
    added = tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    tokenizer.chat_template = PROJECT_TEMPLATE
    tokenizer.eos_token = IM_END  # a turn ends there
    model = load_model(local_model_dir(src))
    model.resize_token_embeddings(len(tokenizer))
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    save_checkpoint(model, tokenizer, out_dir)
    warnings.warn(f"stagent-ray: {src} has no chat template: the project's format, with its "
                  f"{added} markers added as tokens (embeddings resized) in {out_dir}",
                  stacklevel=2)
    return True


def base_checkpoint_path(cfg) -> str:
    """Where the base model is: the user's model, or ckpt/base of the run (the tiny model,
    or the user's with the project's markers added)."""
    from stagent_ray.models.pretrained import KNOWN, model_path
    from stagent_ray.runio import exists, run_path

    if cfg.model.name_or_path in KNOWN:
        return model_path(cfg.model.name_or_path)
    if cfg.model.name_or_path != "tiny" and not exists(cfg.run_dir, "ckpt/base/config.json"):
        return cfg.model.name_or_path  # the user's model as it is (see with_project_markers)
    return run_path(cfg.run_dir, "ckpt/base")


def run_base(cfg) -> dict:
    from stagent_ray.runio import exists, run_path, write_table

    run_dir = cfg.run_dir
    if cfg.model.name_or_path != "tiny":
        from stagent_ray.models.pretrained import KNOWN, convert

        if cfg.model.name_or_path in KNOWN:
            convert(cfg.model.name_or_path)  # once; a no-op when it is there
        elif not exists(run_dir, "ckpt/base/config.json"):
            added = with_project_markers(cfg.model.name_or_path, run_path(run_dir, "ckpt/base"))
            return {"model": base_checkpoint_path(cfg), "built": added}
        return {"model": base_checkpoint_path(cfg), "built": False}
    if exists(run_dir, "ckpt/base/config.json"):
        return {"model": base_checkpoint_path(cfg), "built": False}
    if not cfg.pretrain.docs:
        build_base_checkpoint(run_path(run_dir, "ckpt/base"), cfg.model, cfg.world, cfg.seed)
        return {"model": base_checkpoint_path(cfg), "built": True}

    from stagent_ray.models.lm_corpus import documents
    from stagent_ray.train.sft import run_sft

    if not exists(run_dir, "ckpt/base_init/config.json"):
        build_base_checkpoint(run_path(run_dir, "ckpt/base_init"), cfg.model, cfg.world,
                              cfg.seed)
    texts = documents(cfg.pretrain.docs, cfg.seed, cfg.world.today)
    write_table(run_dir, "data/pretrain_corpus.parquet", [
        {"query_id": f"lm-{i}", "messages": json.dumps([{"role": "assistant", "content": text}])}
        for i, text in enumerate(texts)])
    # no system prompt: plain text, trained on every token
    summary = run_sft(cfg, "pretrain", "data/pretrain_corpus.parquet",
                      run_path(run_dir, "ckpt/base_init"), "ckpt/base", tool_schemas=[])
    return {"model": base_checkpoint_path(cfg), "built": True, "pretrain": summary}
