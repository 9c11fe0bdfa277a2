"""The cascade as one job: pool → tiny_qa → sft0 → score → split → sft1 → rl → eval → report.

The run directory holds every artifact and `manifest.json` (config, config hash, per-stage
status, artifacts and metrics). A stage whose status is complete and whose artifacts exist
is skipped; a stage that died is run again and resumes from what it left (scoring by
query_id, training from its last checkpoint). The manifest marks a stage complete only
after its artifacts are written.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

from stagent_ray.config import Config, config_to_dict
from stagent_ray.loggers import emit_dashboard_metrics, make_logger
from stagent_ray.runio import RunDirError, exists, read_json, run_path, write_json

STAGES = ["pool", "tiny_qa", "sft0", "score", "split", "sft1", "rl", "eval", "report"]

# What each stage leaves behind; the stage counts as done only if all of these exist.
ARTIFACTS = {
    "pool": ["data/pool.parquet", "data/eval.parquet"],
    "tiny_qa": ["data/tiny_qa.parquet"],
    "sft0": ["ckpt/sft0/config.json"],
    "score": ["data/full_qa.parquet", "data/trajectories.parquet"],
    "split": ["data/certain.parquet", "data/hard.parquet", "data/split_report.json"],
    "sft1": ["ckpt/sft1/config.json"],
    "rl": ["ckpt/rl/config.json"],
    "eval": ["eval/summary.json"],
    "report": ["report/index.html"],
}


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def load_manifest(cfg: Config) -> dict:
    if exists(cfg.run_dir, "manifest.json"):
        manifest = read_json(cfg.run_dir, "manifest.json")
    else:
        manifest = {"stages": {}}
    manifest["config"] = config_to_dict(cfg)
    manifest["config_hash"] = config_hash(cfg)
    return manifest


def stage_done(cfg: Config, manifest: dict, stage: str) -> bool:
    entry = manifest["stages"].get(stage, {})
    return entry.get("status") == "complete" and all(exists(cfg.run_dir, a) for a in ARTIFACTS[stage])


def base_checkpoint(cfg: Config) -> str:
    """The starting model: a hub id / local path, or the tiny model built into the run dir
    (pretrained on synthetic world text on Ray Train when pretrain.docs > 0)."""
    if cfg.model.name_or_path != "tiny":
        return cfg.model.name_or_path
    if not exists(cfg.run_dir, "ckpt/base/config.json"):
        from stagent_ray.models.build import build_base_checkpoint
        if not cfg.pretrain.docs:
            build_base_checkpoint(run_path(cfg.run_dir, "ckpt/base"), cfg.model, cfg.world,
                                  cfg.seed)
        else:
            from stagent_ray.models.lm_corpus import documents
            from stagent_ray.runio import write_table
            from stagent_ray.train.sft import run_sft

            if not exists(cfg.run_dir, "ckpt/base_init/config.json"):
                build_base_checkpoint(run_path(cfg.run_dir, "ckpt/base_init"), cfg.model,
                                      cfg.world, cfg.seed)
            texts = documents(cfg.pretrain.docs, cfg.seed, cfg.world.today)
            write_table(cfg.run_dir, "data/pretrain_corpus.parquet", [
                {"query_id": f"lm-{i}", "messages": json.dumps([{"role": "assistant",
                                                                 "content": text}])}
                for i, text in enumerate(texts)])
            # no system prompt: plain text, trained on every token
            run_sft(cfg, cfg.run_dir, "pretrain", "data/pretrain_corpus.parquet",
                    run_path(cfg.run_dir, "ckpt/base_init"), "ckpt/base", tool_schemas=[])
    return run_path(cfg.run_dir, "ckpt/base")


def rl_prompt_config(cfg: Config) -> tuple[Config, bool]:
    """cfg for RL on the run's hard queries, or on the whole pool when there are none (a
    weak πθ0 can leave no hard query: train on the pool, and say so); and whether it fell
    back."""
    from dataclasses import replace

    from stagent_ray.runio import read_table

    fallback = cfg.rl.prompt_set == "hard" and not read_table(cfg.run_dir, "data/hard.parquet")
    if fallback:
        print("[rl] no hard queries in data/hard.parquet; RL runs on the whole pool "
              "(rl.prompt_set=all)", file=sys.stderr)
        cfg = replace(cfg, rl=replace(cfg.rl, prompt_set="all"))
    return cfg, fallback


def run_stage(cfg: Config, stage: str) -> dict:
    run_dir = cfg.run_dir
    if stage == "pool":
        from stagent_ray.stages.pool import run_pool
        return run_pool(cfg, run_dir)
    if stage == "tiny_qa":
        from stagent_ray.stages.tiny_qa import run_tiny_qa
        return run_tiny_qa(cfg, run_dir)
    if stage == "sft0":
        from stagent_ray.train.sft import run_sft
        return run_sft(cfg, run_dir, "sft0", "data/tiny_qa.parquet", base_checkpoint(cfg),
                       "ckpt/sft0")
    if stage == "score":
        from stagent_ray.stages.score import run_score
        return run_score(cfg, run_dir, run_path(run_dir, "ckpt/sft0"))
    if stage == "split":
        from stagent_ray.stages.split import run_split
        return run_split(cfg, run_dir)
    if stage == "sft1":
        from stagent_ray.train.sft import run_sft
        return run_sft(cfg, run_dir, "sft1", "data/certain.parquet",
                       run_path(run_dir, "ckpt/sft0"), "ckpt/sft1")
    if stage == "rl":
        from stagent_ray.train.rl import run_rl
        cfg, fallback = rl_prompt_config(cfg)
        metrics = run_rl(cfg, run_dir, run_path(run_dir, "ckpt/sft1"), "ckpt/rl")
        return {**metrics, "prompt_set": cfg.rl.prompt_set, "hard_set_empty": fallback}
    if stage == "eval":
        from stagent_ray.stages.evaluate import run_eval
        return run_eval(cfg, run_dir)
    if stage == "report":
        from stagent_ray.stages.report import run_report
        return run_report(cfg, run_dir)
    raise ValueError(f"unknown stage {stage!r}")


def select_stages(stages: list[str] | None, from_stage: str | None) -> list[str]:
    chosen = list(STAGES)
    if from_stage:
        chosen = chosen[chosen.index(from_stage):]
    if stages:
        unknown = [s for s in stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; stages are {', '.join(STAGES)}")
        chosen = [s for s in chosen if s in stages]
    return chosen


def run_pipeline(cfg: Config, stages: list[str] | None = None, from_stage: str | None = None,
                 log=print) -> int:
    from stagent_ray.ray_setup import init_ray

    try:
        chosen = select_stages(stages, from_stage)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "://" not in cfg.run_dir:
        # Ray workers run in other directories: every path they receive must be absolute.
        cfg.run_dir = os.path.abspath(cfg.run_dir)
    for spec in cfg.world.mcp_servers:  # stdio servers are started from workers' directories
        if "/" in spec.get("command", "") and not os.path.isabs(spec["command"]):
            spec["command"] = os.path.abspath(spec["command"])
        if spec.get("cwd"):
            spec["cwd"] = os.path.abspath(spec["cwd"])
    init_ray(cfg.ray)
    manifest = load_manifest(cfg)
    write_json(cfg.run_dir, "manifest.json", manifest)
    logger = make_logger(cfg.log.kind, cfg.run_dir, cfg.log.project, cfg.log.run_name,
                         config_to_dict(cfg))
    try:
        return _run_stages(cfg, chosen, manifest, logger, bool(stages or from_stage), log)
    finally:
        logger.close()


def _run_stages(cfg: Config, chosen: list[str], manifest: dict, logger, forced_run: bool,
                log) -> int:
    forced = set(chosen) if forced_run else set()
    for stage in chosen:
        if stage not in forced and stage_done(cfg, manifest, stage):
            log(f"[{stage}] complete, skipped")
            continue
        log(f"[{stage}] running")
        entry = manifest["stages"].setdefault(stage, {})
        entry.update(status="running", started=time.time(), config_hash=manifest["config_hash"])
        write_json(cfg.run_dir, "manifest.json", manifest)
        try:
            metrics = run_stage(cfg, stage)
        except (RunDirError, ValueError) as exc:
            entry.update(status="failed", error=str(exc))
            write_json(cfg.run_dir, "manifest.json", manifest)
            print(f"[{stage}] failed: {exc}", file=sys.stderr)
            return 1
        entry.update(status="complete", finished=time.time(), metrics=metrics,
                     seconds=time.time() - entry["started"],
                     artifacts=[run_path(cfg.run_dir, a) for a in ARTIFACTS[stage]])
        write_json(cfg.run_dir, "manifest.json", manifest)  # completion is recorded last
        emit_dashboard_metrics(stage, metrics or {})
        logger.log({f"{stage}/{k}": v for k, v in (metrics or {}).items()},
                   step=STAGES.index(stage))
        log(f"[{stage}] complete in {entry['seconds']:.1f}s")
    if exists(cfg.run_dir, "report/index.html"):
        log(f"report: {run_path(cfg.run_dir, 'report/index.html')}")
    return 0
