"""The cascade as one job: pool → tiny_qa → base → sft0 → score → split → sft1 → remeasure →
rl → eval → report. Each stage is one file (stages/, and train/ for the Ray Train loops).

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

STAGES = ["pool", "tiny_qa", "base", "sft0", "score", "split", "sft1", "remeasure", "rl", "eval",
          "report"]

# What each stage leaves behind; the stage counts as done only if all of these exist.
ARTIFACTS = {
    "pool": ["data/pool.parquet", "data/eval.parquet"],
    "tiny_qa": ["data/tiny_qa.parquet"],
    "base": ["ckpt/base/config.json"],   # none when model.name_or_path is the user's model
    "sft0": ["ckpt/sft0/config.json"],
    "score": ["data/full_qa.parquet", "data/trajectories.parquet"],
    "split": ["data/certain.parquet", "data/hard.parquet", "data/split_report.json"],
    "sft1": ["ckpt/sft1/config.json"],
    "remeasure": ["data/remeasure_report.json"],
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


def stage_artifacts(cfg: Config, stage: str) -> list[str]:
    if stage == "base" and cfg.model.name_or_path != "tiny":
        return []
    if stage == "pool" and cfg.pool.source == "world":  # the entity split needs the world
        return ARTIFACTS[stage] + ["data/eval_entities.parquet"]
    return ARTIFACTS[stage]


def stage_done(cfg: Config, manifest: dict, stage: str) -> bool:
    entry = manifest["stages"].get(stage, {})
    return entry.get("status") == "complete" and all(exists(cfg.run_dir, a)
                                                     for a in stage_artifacts(cfg, stage))


def run_stage(cfg: Config, stage: str) -> dict:
    run_dir = cfg.run_dir
    if stage == "pool":
        from stagent_ray.stages.pool import run_pool
        return run_pool(cfg)
    if stage == "tiny_qa":
        from stagent_ray.stages.tiny_qa import run_tiny_qa
        return run_tiny_qa(cfg)
    if stage == "base":
        from stagent_ray.stages.base import run_base
        return run_base(cfg)
    if stage == "sft0":
        from stagent_ray.stages.base import base_checkpoint_path
        from stagent_ray.train.sft import run_sft
        return run_sft(cfg, "sft0", "data/tiny_qa.parquet", base_checkpoint_path(cfg),
                       "ckpt/sft0")
    if stage == "score":
        from stagent_ray.stages.score import run_score
        return run_score(cfg, run_path(run_dir, "ckpt/sft0"))
    if stage == "split":
        from stagent_ray.stages.split import run_split
        return run_split(cfg)
    if stage == "sft1":
        from stagent_ray.train.sft import run_sft
        return run_sft(cfg, "sft1", "data/certain.parquet", run_path(run_dir, "ckpt/sft0"),
                       "ckpt/sft1")
    if stage == "remeasure":
        from stagent_ray.stages.remeasure import run_remeasure
        return run_remeasure(cfg, run_path(run_dir, "ckpt/sft1"))
    if stage == "rl":
        from stagent_ray.train.rl import run_rl
        return run_rl(cfg, run_path(run_dir, "ckpt/sft1"), "ckpt/rl")
    if stage == "eval":
        from stagent_ray.stages.evaluate import run_eval
        return run_eval(cfg)
    if stage == "report":
        from stagent_ray.stages.report import run_report
        return run_report(cfg)
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
                     artifacts=[run_path(cfg.run_dir, a) for a in stage_artifacts(cfg, stage)])
        write_json(cfg.run_dir, "manifest.json", manifest)  # completion is recorded last
        emit_dashboard_metrics(stage, metrics or {})
        logger.log({f"{stage}/{k}": v for k, v in (metrics or {}).items()},
                   step=STAGES.index(stage))
        log(f"[{stage}] complete in {entry['seconds']:.1f}s")
    if exists(cfg.run_dir, "report/index.html"):
        log(f"report: {run_path(cfg.run_dir, 'report/index.html')}")
    return 0
