"""Configs: plain dataclasses, loaded from YAML, overridden with dotted `key=value` args.

    cfg = load_config("configs/tiny.yaml", ["sft0.lr=3e-4", "score.n_rollouts=4"])

Unknown keys, wrong types and every cross-field check (validate) fail at load time with the
dotted key named, so a typo in a cluster config dies in the first second instead of after an
hour of scoring; a key that moved names its new place.

How a config reaches Ray: workers, actors and Serve replicas get the `Config` dataclass
itself (Ray pickles it), never a dict to rebuild; the run directory is `cfg.run_dir`, passed
nowhere else. `config_to_dict` is for the manifest and the loggers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class RayConfig:
    address: str | None = None       # None: $RAY_ADDRESS if set, else start a local Ray
    num_cpus: int | None = None      # local Ray only; None = all the machine's cores
    num_gpus: int | None = None


@dataclass
class WorldConfig:
    seed: int = 0
    n_cities: int = 4
    pois_per_city: int = 320
    today: str = "2026-06-01"
    backend: str = "world"           # world | replay | http | mcp
    replay_path: str | None = None
    http_url: str | None = None
    mcp_servers: list = field(default_factory=list)  # MCP server specs (world/mcp_client.py)
    cache_size: int = 4096
    tool_timeout_s: float = 10.0


@dataclass
class ModelConfig:
    """The policy's starting point: a hub id / local path, or "tiny" to build one locally."""
    name_or_path: str = "tiny"
    vocab_size: int = 4096           # tokenizer trained on the world's vocabulary
    hidden_size: int = 256
    intermediate_size: int = 768
    num_layers: int = 6
    num_heads: int = 4
    num_kv_heads: int = 2
    max_seq_len: int = 2048
    dtype: str = "float32"           # float32 | bfloat16


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 256        # per assistant turn
    seed: int | None = None


@dataclass
class EngineConfig:
    kind: str = "hf"                 # hf | vllm | openai | oracle
    model: str | None = None         # checkpoint path; None = the stage's own checkpoint
    device: str = "auto"             # auto | cpu | cuda
    dtype: str = "float32"           # hf engine weights and KV cache: float32 | bfloat16
    compile: bool | None = None      # hf engine: CUDA-graph decode (None: on for CUDA)
    max_batch_size: int = 16
    base_url: str | None = None      # openai engine
    api_key_env: str = "OPENAI_API_KEY"
    noise: float = 0.3               # oracle engine: rate of realistic mistakes


@dataclass
class AgentConfig:
    max_turns: int = 6
    max_tokens: int = 1536           # whole trajectory, prompt included
    max_calls_per_turn: int = 1
    system_prompt: str | None = None
    tool_prompt: str = "full"        # full JSON schemas | compact (names, argument types) | none
    # The model's own format (models/formats.py). auto: the tokenizer's chat template when it
    # has one that is not the project's, else the project's ChatML/Hermes renderer.
    chat_format: str = "auto"        # auto | project | template
    tool_parser: str = "auto"        # auto (from the template) | hermes | llama3_json | mistral
    enable_thinking: bool = False    # passed to the template (Qwen3's thinking mode)
    train_thinking: bool = True      # SFT trains on <think> blocks (false: masked out)
    # Turns join the engine's batch at points fixed by the episodes' own progress, in seed
    # order, never by when their tools happen to finish: a rerun samples the same tokens and
    # log-probs bit for bit (killed stages resume exactly). false: a turn joins as soon as it
    # arrives (the engine never waits for a slow tool).
    reproducible: bool = True


@dataclass
class ServeConfig:
    replicas: int = 1
    cpus_per_replica: float = 0.5
    gpus_per_replica: float = 0.0
    accelerator_type: str | None = None  # with gpus_per_replica: only nodes with that GPU type
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.01
    # requests a replica holds at once; None: 2 x max_batch_size (Ray's default of 5 would cap
    # every batch at 5 rows); must be >= max_batch_size
    max_ongoing_requests: int | None = None
    teacher_replicas: int = 1        # the Teacher deployment (model teachers: hf, vllm, openai)
    host: str = "127.0.0.1"          # loopback unless told otherwise
    port: int = 8000
    api_key_env: str | None = None   # ingress requires this key when the env var is set


@dataclass
class TrainConfig:
    """Where the Ray Train workers of every training stage run: read from the config and the
    cluster, never from the driver (on a cluster the driver sits on a CPU head)."""
    use_gpu: bool | str = "auto"     # auto: when the cluster has GPUs when the stage starts
    cpus_per_worker: float | None = None  # None: 0.5 on CPU (two workers fit 2 cores), 1 on GPU
    gpus_per_worker: float = 1.0
    accelerator_type: str | None = None   # e.g. H100, A10G: only nodes with that GPU type


@dataclass
class PoolConfig:
    """Where candidate queries come from: the synthetic world's families, or the user's files.

    source=file reads `query_files` (.jsonl / .parquet; one query per row, its text in
    `text_field`), runs the same funnel, and holds out `eval_fraction` of what survives as the
    eval set (`target_size` then bounds pool + eval). Such queries carry no ground truth, so
    they need reward.kind=judge.
    """
    source: str = "world"            # world | file
    query_files: list = field(default_factory=list)  # source=file: local paths or URIs
    text_field: str = "text"
    eval_fraction: float = 0.1       # source=file: share of the curated queries held out
    queries_per_family: int = 40     # source=world
    target_size: int = 300
    eval_per_family: int = 10        # source=world
    families: list = field(default_factory=list)  # source=world: only these (empty: all 16)
    hold_out_city: bool = True       # source=world: eval queries from a city the pool lacks
    # source=world: the entity split (data/eval_entities.parquet), queries that name places,
    # anchors, districts or routes the pool never names, in the pool's cities; a share of
    # the candidates' entities is held out of the pool so that every kind has some
    entity_eval_per_family: int | None = None  # None: eval_per_family; 0: no entity split
    held_out_entity_share: float = 0.1
    lsh_threshold: float = 0.8
    semantic_threshold: float = 0.9
    embedder: str = "hashed"         # hashed | a sentence-transformers model path


@dataclass
class TinyQAConfig:
    fraction: float = 0.1
    long_tail: int = 10
    k: int = 8


@dataclass
class RolloutConfig:
    """The Ray Data rollout actors of every stage that rolls out (tiny_qa, score, the split's
    teacher recovery, eval): how many, what each reserves, how many queries a batch holds."""
    num_actors: int = 2
    # more than num_actors: Ray Data grows the pool up to this while queries wait, as the
    # autoscaler adds workers (None: a fixed pool of num_actors)
    max_actors: int | None = None
    cpus_per_actor: float = 0.5
    gpus_per_actor: float = 0.0      # reserved for each policy-engine actor (score, eval)
    accelerator_type: str | None = None  # with gpus_per_actor: only nodes with that GPU type
    batch_size: int = 4              # queries per Data batch (and per resumable part file)


@dataclass
class ScoreConfig:
    n_rollouts: int = 8
    temperature: float = 1.0
    engine: str = "actor"            # actor: engine inside each Data actor | serve: Policy deployment
    rubric_weight: float = 0.3       # reward = (1 - w)·verified + w·rubric (score, split, eval)


@dataclass
class SplitConfig:
    certain_threshold: float = 0.75  # mean reward at or above: certain
    keep_trivial_fraction: float = 0.2
    k_max: int = 8                   # extra teacher attempts on all-fail queries


@dataclass
class SFTConfig:
    lr: float = 1e-3
    epochs: int = 3
    batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 1024
    warmup_steps: int = 10
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    num_workers: int = 2
    lora: bool = False
    lora_rank: int = 16
    compile: bool = False            # torch.compile each decoder layer (GPUs: ~1.5x faster)
    activation_checkpointing: bool = False  # recompute layers in backward: less memory
    # lm_head + cross-entropy in row chunks, no [N, V] logits (sft.LinearCrossEntropy);
    # None: on GPUs for vocabularies of 32k and up. Models with a biased, soft-capped or
    # scaled lm_head keep the logits path.
    chunked_loss: bool | None = None
    # packed rows on GPUs: auto | flash (torch's varlen kernel, or the flash-attn package)
    # | cudnn (cuDNN's fused attention: Hopper+, needs nvidia-cudnn-frontend). auto = cudnn
    # where it can run, else flash (train/attention.py)
    attention_kernel: str = "auto"
    checkpoint_every: int = 50
    log_every: int = 10


@dataclass
class PretrainConfig(SFTConfig):
    """Next-token training of the tiny model from scratch on synthetic world text
    (models/lm_corpus.py) before SFT-0: what a pretrained base would bring (copying names and
    dates). docs: 0 = none, the base stays random weights; only with model.name_or_path=tiny."""
    docs: int = 0
    lr: float = 2e-3
    epochs: int = 1


@dataclass
class RLConfig:
    algorithm: str = "grpo"          # grpo | ppo | gspo
    prompt_set: str = "hard"         # hard: the split's hard queries | all: the whole pool
    # hard: re-measure them (and the all-fail ones) with SFT-1 at rl.temperature first
    remeasure: bool = True
    prompt_order: str = "curriculum"  # curriculum: most uncertain first, then shuffled | shuffle
    steps: int = 20
    prompts_per_step: int = 4
    group_size: int = 8
    temperature: float = 1.0
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    mini_batches: int = 2            # optimizer steps per RL step (>1 makes clipping matter)
    micro_batch_size: int = 4        # sequences per forward/backward on one worker
    clip_low: float = 0.2
    clip_high: float = 0.28
    gspo_clip_low: float = 3e-4
    gspo_clip_high: float = 4e-4
    norm_adv_by_std: bool = True     # GRPO: divide by the group std (off = Dr. GRPO)
    # RL's reward = (1 - w)·verified + w·rubric. 0.1, not scoring's 0.3: on SFT-1's groups at
    # 0.3 a clean fail can outscore a messy pass, and 2.9% of episodes get an advantage
    # against their verdict; at 0.1, none (scripts/probe_rl_signal.py)
    rubric_weight: float = 0.1
    loss_agg: str = "token-mean"     # token-mean | seq-mean-token-mean | seq-mean-token-sum
    kl_coef: float = 0.0
    kl_estimator: str = "k3"         # k1 | k3
    entropy_coef: float = 0.0
    vf_coef: float = 0.5             # PPO value loss weight
    gamma: float = 1.0
    lam: float = 0.95
    critic_lr: float = 1e-4
    dynamic_sampling: bool = True    # drop groups with nothing to compare, draw more (refill)
    filter_on: str = "verified"      # verified: keep groups with mixed verdicts | reward: any spread
    max_refill_rounds: int = 3       # bounded: a step trains on what it has after these
    rollout_engine: str = "inprocess"  # inprocess: an engine in each trainer worker | serve
    # a step whose rollout-vs-trainer log-prob gap (logprob_gap_max) exceeds this fails: the
    # engine sampled with other weights than the trainer's (a stale replica). None/0: off
    max_logprob_gap: float | None = None
    num_workers: int = 2
    checkpoint_every: int = 10
    log_every: int = 1


EVAL_CHECKPOINTS = ["base", "sft0", "sft1", "rl"]


@dataclass
class EvalConfig:
    pass_k: int = 4                  # sampled answers per query for pass@k; 0: greedy only
    temperature: float = 1.0
    checkpoints: list = field(default_factory=lambda: list(EVAL_CHECKPOINTS))
    teacher: bool = True


@dataclass
class RewardConfig:
    """How trajectories are graded: the world's verifier + rubric, an LLM judge, or both."""
    kind: str = "verifier"           # verifier | judge | both
    judge_base_url: str | None = None
    judge_model: str = "judge"
    judge_api_key_env: str | None = None
    judge_concurrency: int = 8
    judge_retries: int = 4
    judge_timeout_s: float = 60.0
    judge_weight: float = 0.5        # kind=both: weight of the judge in the value
    judge_pass_threshold: float = 0.8  # kind=judge: a value at or above counts as a pass


@dataclass
class LogConfig:
    kind: str = "jsonl"              # none | jsonl | tensorboard | wandb | mlflow
    project: str = "stagent-ray"
    run_name: str | None = None


@dataclass
class FaultConfig:
    """Fault injection for reliability tests (off by default) and how hard to retry.

    The four fractions are shares of calls: a tool call that hangs past
    `world.tool_timeout_s` (each one costs that long: set it low when injecting), a tool
    backend that raises, or one that returns a payload that is not a JSON object; a
    generation replaced by garbage. Tool faults are the infrastructure's doing: the call is
    tried again (`tool_retries`), an episode still hit is rolled out again
    (`episode_rerolls`), and one hit even then is marked and left out of every score. Garbage
    output is the model's own failure and is scored as such. Same seed, same faults.
    """
    tool_timeout: float = 0.0
    tool_error: float = 0.0
    tool_malformed: float = 0.0
    engine_garbage: float = 0.0
    seed: int = 0
    tool_retries: int = 2
    episode_rerolls: int = 2
    actor_crash_once: bool = False   # one rollout actor per Data stage dies mid-batch (tests)


@dataclass
class Config:
    run_dir: str = "runs/tiny"
    seed: int = 0
    ray: RayConfig = field(default_factory=RayConfig)
    world: WorldConfig = field(default_factory=WorldConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    agent: AgentConfig = field(default_factory=AgentConfig)
    teacher: EngineConfig = field(default_factory=lambda: EngineConfig(kind="oracle"))
    policy: EngineConfig = field(default_factory=EngineConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pool: PoolConfig = field(default_factory=PoolConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    tiny_qa: TinyQAConfig = field(default_factory=TinyQAConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft0: SFTConfig = field(default_factory=SFTConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    sft1: SFTConfig = field(default_factory=SFTConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    log: LogConfig = field(default_factory=LogConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)


# Values that must lie in a range; checked after every load.
_CHOICES = {
    "world.backend": {"world", "replay", "http", "mcp"},
    "pool.source": {"world", "file"},
    "reward.kind": {"verifier", "judge", "both"},
    "log.kind": {"none", "jsonl", "tensorboard", "wandb", "mlflow"},
    "model.dtype": {"float32", "bfloat16", "float16"},
    "teacher.kind": {"hf", "vllm", "openai", "oracle"},
    "policy.kind": {"hf", "vllm", "openai", "oracle"},
    "policy.dtype": {"float32", "bfloat16", "float16"},
    "score.engine": {"actor", "serve"},
    "agent.tool_prompt": {"full", "compact", "none"},
    "agent.chat_format": {"auto", "project", "template"},
    "agent.tool_parser": {"auto", "hermes", "llama3_json", "mistral"},
    "rl.loss_agg": {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum"},
    "rl.kl_estimator": {"k1", "k3"},
    "rl.prompt_set": {"hard", "all"},
    "rl.prompt_order": {"curriculum", "shuffle"},
    "rl.filter_on": {"verified", "reward"},
    "rl.rollout_engine": {"inprocess", "serve"},
    "rl.algorithm": {"grpo", "ppo", "gspo"},
    **{f"{stage}.attention_kernel": {"auto", "flash", "cudnn"}
       for stage in ("pretrain", "sft0", "sft1")},
}


def _coerce(value, annotation, key: str):
    """Check `value` against a field annotation; build nested dataclasses from dicts."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return _build(annotation, value, key + ".")
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected float, got {value!r}") from None
    if annotation in (int, float, str, bool):
        if not isinstance(value, annotation) or (annotation is int and isinstance(value, bool)):
            raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
        return value
    return value


# Keys that moved: an old config fails with the new key named instead of "unknown key".
MOVED_KEYS = {**{f"score.{name}": f"rollout.{name}"
                 for name in ("num_actors", "cpus_per_actor", "gpus_per_actor", "batch_size")},
              "rl.normalize_std": "rl.norm_adv_by_std"}


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(data):
        if prefix + key in MOVED_KEYS:
            raise ConfigError(f"config key '{prefix}{key}' has moved to "
                              f"'{MOVED_KEYS[prefix + key]}'")
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}' "
                          f"(known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part} is not a section")
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> dict:
    """`["a.b=3", "c=x"]` -> nested dict, values typed by YAML (3 -> int, true -> bool)."""
    data: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value")
        key, raw = item.split("=", 1)
        _set_dotted(data, key.strip(), yaml.safe_load(raw) if raw != "" else "")
    return data


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def validate(cfg: Config) -> Config:
    for dotted, allowed in _CHOICES.items():
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in allowed:
            raise ConfigError(f"{dotted}: {value!r} is not one of {sorted(allowed)}")
    if cfg.pool.families:
        from stagent_ray.tasks.families import FAMILIES

        unknown = sorted(set(cfg.pool.families) - set(FAMILIES))
        if unknown:
            raise ConfigError(f"pool.families: unknown {unknown}; choose from {sorted(FAMILIES)}")
    positive = ["score.n_rollouts", "rollout.num_actors", "rollout.batch_size", "rl.group_size",
                "rl.steps",
                "sft0.batch_size", "sft1.batch_size", "rl.prompts_per_step", "rl.mini_batches",
                "rl.micro_batch_size", "rl.num_workers", "sft0.seq_len", "sft1.seq_len",
                "pretrain.batch_size", "pretrain.seq_len",
                "agent.max_turns", "agent.max_tokens", "serve.replicas", "model.num_layers"]
    for dotted in positive:
        section, name = dotted.split(".")
        if getattr(getattr(cfg, section), name) <= 0:
            raise ConfigError(f"{dotted}: must be > 0")
    for dotted in ["tiny_qa.fraction", "pool.held_out_entity_share", "split.certain_threshold",
                   "split.keep_trivial_fraction", "teacher.noise", "policy.noise", "reward.judge_weight",
                   "reward.judge_pass_threshold", "score.rubric_weight", "rl.rubric_weight"]:
        section, name = dotted.split(".")
        value = getattr(getattr(cfg, section), name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{dotted}: {value} is outside [0, 1]")
    if cfg.train.use_gpu not in (True, False, "auto"):
        raise ConfigError(f"train.use_gpu: {cfg.train.use_gpu!r} is not one of auto, true, false")
    if cfg.train.accelerator_type and cfg.train.use_gpu is False:
        raise ConfigError("train.accelerator_type: names a GPU type, but train.use_gpu is false")
    if cfg.rollout.accelerator_type and not cfg.rollout.gpus_per_actor:
        raise ConfigError("rollout.accelerator_type: names a GPU type, but "
                          "rollout.gpus_per_actor is 0")
    if cfg.serve.accelerator_type and not cfg.serve.gpus_per_replica:
        raise ConfigError("serve.accelerator_type: names a GPU type, but "
                          "serve.gpus_per_replica is 0")
    s = cfg.serve
    if s.max_ongoing_requests is not None and s.max_ongoing_requests < s.max_batch_size:
        raise ConfigError(f"serve.max_ongoing_requests: {s.max_ongoing_requests} is below "
                          f"serve.max_batch_size={s.max_batch_size}: batches could not fill")
    if s.teacher_replicas <= 0:
        raise ConfigError(f"serve.teacher_replicas: {s.teacher_replicas} must be > 0")
    if cfg.rl.max_logprob_gap is not None and cfg.rl.max_logprob_gap < 0:
        raise ConfigError(f"rl.max_logprob_gap: {cfg.rl.max_logprob_gap} must be >= 0 "
                          "(None or 0: off)")
    if cfg.rollout.max_actors is not None and cfg.rollout.max_actors < cfg.rollout.num_actors:
        raise ConfigError(f"rollout.max_actors: {cfg.rollout.max_actors} is below "
                          f"rollout.num_actors = {cfg.rollout.num_actors}")
    if cfg.rl.max_refill_rounds < 0:
        raise ConfigError(f"rl.max_refill_rounds: {cfg.rl.max_refill_rounds} must be >= 0")
    for name in ("cpus_per_actor", "gpus_per_actor"):
        if getattr(cfg.rollout, name) < 0:
            raise ConfigError(f"rollout.{name}: {getattr(cfg.rollout, name)} must be >= 0")
    if cfg.pretrain.docs < 0:
        raise ConfigError(f"pretrain.docs: {cfg.pretrain.docs} must be >= 0 (0: no pretraining)")
    if cfg.pretrain.docs and cfg.model.name_or_path != "tiny":
        raise ConfigError(f"pretrain.docs: pretraining is for the tiny model built from scratch, "
                          f"not model.name_or_path={cfg.model.name_or_path!r}")
    if cfg.eval.pass_k < 0:
        raise ConfigError(f"eval.pass_k: {cfg.eval.pass_k} must be >= 0 (0: greedy only)")
    if not isinstance(cfg.eval.checkpoints, list) or any(
            name not in EVAL_CHECKPOINTS for name in cfg.eval.checkpoints):
        raise ConfigError(f"eval.checkpoints: {cfg.eval.checkpoints!r} must be a list of "
                          f"{EVAL_CHECKPOINTS}")
    for stage in ("pretrain", "sft0", "sft1"):
        sft = getattr(cfg, stage)
        if sft.num_workers <= 0 or sft.grad_accum <= 0 or sft.batch_size % (
                sft.num_workers * sft.grad_accum):
            raise ConfigError(f"{stage}.batch_size: {sft.batch_size} must be a multiple of "
                              f"{stage}.num_workers x {stage}.grad_accum = {sft.num_workers} x "
                              f"{sft.grad_accum}")
    for engine in ("teacher", "policy"):
        if getattr(cfg, engine).kind == "openai" and not getattr(cfg, engine).base_url:
            raise ConfigError(f"{engine}.base_url: {engine}.kind 'openai' needs an endpoint")
    if cfg.teacher.kind in ("hf", "vllm") and not cfg.teacher.model:
        # the policy's checkpoint is the stage's own; a model teacher must be named
        raise ConfigError(f"teacher.model: teacher.kind {cfg.teacher.kind!r} needs a checkpoint")
    if cfg.world.backend == "replay" and not cfg.world.replay_path:
        raise ConfigError("world.replay_path: backend 'replay' needs a recorded file")
    if cfg.world.backend == "http" and not cfg.world.http_url:
        raise ConfigError("world.http_url: backend 'http' needs a URL")
    _validate_faults(cfg.faults)
    if cfg.world.backend == "mcp" and not cfg.world.mcp_servers:
        raise ConfigError("world.mcp_servers: backend 'mcp' needs at least one server spec")
    if cfg.reward.kind != "verifier" and not cfg.reward.judge_base_url:
        raise ConfigError(f"reward.judge_base_url: reward.kind={cfg.reward.kind!r} needs a judge")
    if cfg.pool.source == "file":
        files = cfg.pool.query_files
        if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
            raise ConfigError(f"pool.query_files: pool.source 'file' needs a list of paths, "
                              f"got {files!r}")
        if not 0.0 < cfg.pool.eval_fraction < 1.0:
            raise ConfigError(f"pool.eval_fraction: {cfg.pool.eval_fraction} is outside (0, 1)")
        if cfg.reward.kind != "judge":  # the verifier checks world ground truth, which files lack
            raise ConfigError(f"reward.kind: pool.source 'file' has no ground truth, so it needs "
                              f"'judge', not {cfg.reward.kind!r}")
    return cfg


def _validate_faults(f: FaultConfig) -> None:
    for name in ("tool_timeout", "tool_error", "tool_malformed", "engine_garbage"):
        if not 0.0 <= getattr(f, name) <= 1.0:
            raise ConfigError(f"faults.{name}: {getattr(f, name)} is outside [0, 1]")
    total = f.tool_timeout + f.tool_error + f.tool_malformed
    if total > 1.0:
        raise ConfigError(f"faults.tool_timeout + tool_error + tool_malformed: {total} is over 1")
    for name in ("tool_retries", "episode_rerolls"):
        if getattr(f, name) < 0:
            raise ConfigError(f"faults.{name}: must be >= 0")


def config_from_dict(data: dict) -> Config:
    return validate(_build(Config, data or {}))


def load_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    data: dict = {}
    if path:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    data = _merge(data, parse_overrides(overrides or []))
    return config_from_dict(data)


def config_to_dict(cfg) -> dict:
    """For the manifest and loggers only: workers and actors get the Config itself."""
    return dataclasses.asdict(cfg)
