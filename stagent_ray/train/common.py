"""What the SFT and RL trainers share: model setup (LoRA, FSDP2), train-state checkpoints,
Hugging Face export, MFU, and run-directory output.

Sharding is FSDP2 (`fully_shard`) everywhere: on GPUs with a bf16 `MixedPrecisionPolicy`
(fp32 master weights and gradient reduction), on CPU over gloo in fp32. One code path on
both, so the CPU tests exercise what runs on GPUs. FSDP1 is not an option: it needs an
accelerator and segfaults on offloaded state dicts on CPU.

Train state is saved with torch.distributed.checkpoint (DCP): every rank writes its own
shard files into its own local directory, Ray Train merges the directories into one
checkpoint, and DCP reads them back — also into a different number of workers.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pyarrow.fs as pafs
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_state_dict, set_state_dict)
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from stagent_ray.runio import copy_dir, local_model_dir, run_path  # noqa: F401 (re-exported)

# Dense bf16 peak FLOP/s by GPU name (first matching substring wins, so PCIe before SXM).
PEAK_BF16_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
                   ("H200", 989e12), ("H20", 148e12), ("GB200", 2500e12), ("B200", 2250e12),
                   ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12)]
LORA_TARGETS = "all-linear"  # every Linear in the decoder layers; peft leaves lm_head out


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((f for key, f in PEAK_BF16_FLOPS if key in name), None)


def flops_per_token(config, n_params: int, seq_len: int, lm_head_fraction: float = 1.0) -> float:
    """Training FLOPs per token: 6N for the matmuls (forward + backward) plus causal
    attention, 6·L·H·Q·T (12·L·H·Q·T halved by the causal mask). With T = seq_len this is
    the convention of the H100 baseline in ENV.md (21.6% MFU for the 0.6B plain loop).
    lm_head_fraction: the share of tokens whose logits are computed (sft.packed_logits
    computes them only where a token trains), so skipped lm_head work is not counted."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = config.num_hidden_layers * config.num_attention_heads * head_dim * seq_len
    lm_head = config.vocab_size * config.hidden_size
    return 6 * (n_params - (1 - lm_head_fraction) * lm_head) + 6 * attention


# ---------------------------------------------------------------- model setup

def lora_config(rank: int):
    from peft import LoraConfig

    # alpha = 2r is the usual choice (scale 2); no dropout so runs resume bit-for-bit.
    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                      target_modules=LORA_TARGETS, task_type="CAUSAL_LM")


def load_for_training(path: str, lora_rank: int = 0, activation_checkpointing: bool = False,
                      attn_implementation: str | None = None):
    """fp32 weights (the master copy; bf16 compute comes from FSDP's mixed precision),
    optionally wrapped in a peft LoRA model with only the adapters trainable."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(local_model_dir(path), dtype=torch.float32,
                                                 attn_implementation=attn_implementation)
    model.config.use_cache = False
    if activation_checkpointing:
        # Non-reentrant: works with frozen inputs (LoRA) and with FSDP2's hooks.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora_rank > 0:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config(lora_rank))
    return model


def attention_for(device: torch.device, packed: bool = True, kernel: str = "auto") -> str:
    """Training attention on GPUs, for packed rows (SFT): cuDNN's fused attention with
    kernel="cudnn", or with "auto" where it can run (attention.py, registered here); else
    the flash-attn package if installed; else torch's own varlen flash kernel. Elsewhere
    SDPA (for packed rows with a block-diagonal mask from the position ids; for padded rows,
    RL, with the attention mask)."""
    if device.type == "cuda":
        from stagent_ray.train import attention, cudnn_attention

        if packed and (kernel == "cudnn" or kernel == "auto" and cudnn_attention.available()):
            attention.register("cudnn")
            return attention.VARLEN
        try:
            import flash_attn  # noqa: F401
            return "flash_attention_2"
        except ImportError:
            pass
        if packed and attention.varlen_kernel() is not None:
            attention.register()
            return attention.VARLEN
    return "sdpa"


def base_model(model):
    """The transformers model inside a peft wrapper (the model itself without LoRA)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> list:
    """The model's repeated blocks (the modules its class names in _no_split_modules)."""
    base = base_model(model)
    layer_types = set(getattr(base, "_no_split_modules", None) or [])
    if not layer_types:
        raise ValueError(f"{type(base).__name__} names no _no_split_modules: "
                         "cannot tell which modules are its layers")
    return [m for m in model.modules() if type(m).__name__ in layer_types]


def compile_layers(model) -> None:
    """torch.compile each decoder layer (before sharding): fuses norms, rotary and SwiGLU.
    The layers share one compiled graph; the first steps pay the compile time."""
    for layer in decoder_layers(model):
        layer.compile()


def shard_model(model, device: torch.device):
    """FSDP2: each decoder layer is one unit (its weights gathered just for its forward and
    backward), the rest (embeddings, tied lm_head, final norm) is the root unit."""
    model.to(device)
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
          if device.type == "cuda" else MixedPrecisionPolicy())
    # Resharding after forward frees memory only when there are shards to free: with one
    # rank it would just cast the weights to bf16 a second time for backward.
    reshard = dist.get_world_size() > 1
    for layer in decoder_layers(model):
        fully_shard(layer, mp_policy=mp, reshard_after_forward=reshard)
    # The root is gathered again right at the start of backward: keep it gathered.
    fully_shard(model, mp_policy=mp, reshard_after_forward=False)
    return model


def adamw(model, lr: float, weight_decay: float, device: torch.device):
    """AdamW over trainable parameters; no decay on norms and biases (1-D tensors)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8,
                             fused=device.type == "cuda")


def grad_norm_and_clip(model, max_norm: float) -> torch.Tensor:
    """Global grad norm over all ranks' shards (a 0-d tensor: no host sync until it is
    logged); clips when max_norm > 0."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # DTensor under FSDP2


# ---------------------------------------------------------------- train state

def _options(model, strict: bool = True) -> StateDictOptions:
    # With LoRA only the adapters change; the frozen base comes back from the init checkpoint.
    # Loading then names only the trainable keys, hence strict=False there (DCP itself has
    # already failed if the checkpoint lacked any key we asked for).
    frozen = any(not p.requires_grad for p in model.parameters())
    return StateDictOptions(ignore_frozen_params=frozen, strict=strict)


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class CheckpointError(RuntimeError):
    """A training checkpoint that cannot be resumed from."""


def save_train_state(directory: str, model, optimizer, rank: int, trainer_state: dict) -> None:
    """Collective. Model + optimizer shards (DCP), this rank's RNG, and rank 0's
    `trainer_state` (step, scheduler, history: anything small and the same on all ranks)."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(model))
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=os.path.join(directory, "dcp"))
    torch.save(rng_state(), os.path.join(directory, f"rng_rank{rank}.pt"))
    if rank == 0:
        torch.save(trainer_state, os.path.join(directory, "trainer_state.pt"))


def load_train_state(directory: str, model, optimizer, rank: int) -> dict:
    """Collective. Restores model and optimizer in place; returns rank 0's trainer state.
    A missing, truncated or mismatched checkpoint raises CheckpointError naming it."""
    model_sd, optim_sd = get_state_dict(model, optimizer, options=_options(model))
    state = {"model": model_sd, "optim": optim_sd}
    try:
        dcp.load(state, checkpoint_id=os.path.join(directory, "dcp"))
        trainer_state = torch.load(os.path.join(directory, "trainer_state.pt"), weights_only=False)
    except (Exception, CheckpointException) as exc:  # DCP's is a BaseException
        raise CheckpointError(
            f"cannot resume from the training checkpoint {directory}: {type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''} — it is "
            f"truncated or from another model/config. Delete it (or its run's train/<stage> "
            f"directory) to start the stage over.") from exc
    set_state_dict(model, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"], options=_options(model, strict=False))
    rng_file = os.path.join(directory, f"rng_rank{rank}.pt")
    if os.path.exists(rng_file):  # absent when resuming into more workers than before
        set_rng_state(torch.load(rng_file, weights_only=False))
    return trainer_state


# ---------------------------------------------------------------- export

def export_hf(model, init_path: str, out_dir: str, rank: int, lora_rank: int = 0,
              merge_lora: bool = True) -> None:
    """Collective. Gather the full weights on rank 0 (CPU) and write a Hugging Face
    checkpoint (model + tokenizer, in the init checkpoint's dtype) that
    `AutoModelForCausalLM.from_pretrained` loads. LoRA adapters are merged in unless
    `merge_lora` is off (then the directory is a peft adapter over `init_path`)."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                cpu_offload=True))
    if rank != 0:
        return
    from transformers import AutoConfig, AutoModelForCausalLM

    from stagent_ray.models.build import load_tokenizer, save_checkpoint

    src = local_model_dir(init_path)
    dtype = AutoConfig.from_pretrained(src).dtype or torch.float32  # before fp32 overwrites it
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    fresh = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    if lora_rank > 0:
        from peft import get_peft_model

        fresh = get_peft_model(fresh, lora_config(lora_rank))
    missing, unexpected = fresh.load_state_dict(full, strict=False)
    # Tied weights (lm_head = embed_tokens) may appear once; anything else is a bug.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise RuntimeError(f"export: state dict mismatch, missing={missing[:5]} "
                           f"unexpected={unexpected[:5]}")
    if lora_rank > 0 and merge_lora:
        fresh = fresh.merge_and_unload()
    save_checkpoint(fresh.to(dtype), load_tokenizer(src), out_dir)


# ---------------------------------------------------------------- run-directory output

def publish_dir(src_fs: pafs.FileSystem, src_path: str, run_dir: str, relative: str) -> str:
    """Copy a directory (e.g. out of a Ray checkpoint) to `run_dir/relative`; returns that
    path or URI (runio.copy_dir: never half-copied under the final name locally)."""
    dst = run_path(run_dir, relative)
    copy_dir(src_fs, src_path, dst)
    return dst


def all_reduce_sum(x: float, device: torch.device) -> float:
    t = torch.tensor(x, dtype=torch.float64 if device.type == "cpu" else torch.float32,
                     device=device)
    dist.all_reduce(t)
    return float(t)


# ---------------------------------------------------------------- Ray Train

CPUS_PER_CPU_WORKER = 0.5  # Ray CPU reservation per worker on CPU hosts: two fit on 2 cores
# Ray Train V2 workers hand each report to a queue of size 1 that the controller drains when
# it polls them, every 2 s by default: a report blocks until the previous one was polled, so
# a tiny model logging every step ran at one step per 2 s. Poll faster unless the user chose.
POLL_ENV, POLL_S = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25"


def storage_path(run_dir: str) -> str:
    """Where a stage's Ray Train checkpoints live: `<run_dir>/train` (absolute, or a URI with
    its query string: Ray Train builds its filesystem from it)."""
    return run_path(run_dir, "train")


def scaling_config(train_cfg, num_workers: int):
    """The workers' resource request, from `train.*` and the cluster. Not from the driver:
    under `ray job submit` it runs on a CPU head, and its torch.cuda says nothing of the
    GPU workers. use_gpu auto asks Ray what the cluster holds now; an autoscaler's GPU
    nodes that are not up yet do not count (say `train.use_gpu: true` there)."""
    import ray
    from ray.train import ScalingConfig

    use_gpu = train_cfg.use_gpu
    if use_gpu == "auto":
        use_gpu = ray.cluster_resources().get("GPU", 0) > 0
    cpus = train_cfg.cpus_per_worker
    if cpus is None:
        cpus = 1.0 if use_gpu else CPUS_PER_CPU_WORKER
    resources = {"CPU": cpus, **({"GPU": train_cfg.gpus_per_worker} if use_gpu else {})}
    return ScalingConfig(num_workers=num_workers, use_gpu=use_gpu, resources_per_worker=resources,
                         accelerator_type=train_cfg.accelerator_type if use_gpu else None)


def fit_on_ray_train(loop, config: dict, name: str, run_dir: str, num_workers: int,
                     failure_config=None, checkpoints_to_keep: int = 2):
    """Run `loop` on `num_workers` TorchTrainer workers (resources from config["cfg"].train)
    with checkpoints under `storage_path(run_dir)/name`, so running the stage again resumes
    it. Default failure policy: retry a worker failure twice from the last checkpoint, give
    up on start-up after three controller failures instead of waiting forever."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        loop, train_loop_config=config,
        scaling_config=scaling_config(config["cfg"].train, num_workers),
        run_config=RunConfig(
            name=name, storage_path=storage_path(run_dir),
            failure_config=failure_config or FailureConfig(max_failures=2,
                                                           controller_failure_limit=3),
            checkpoint_config=CheckpointConfig(num_to_keep=checkpoints_to_keep)))
    set_poll = POLL_ENV not in os.environ
    if set_poll:  # read from the driver's environment when fit() starts the controller
        os.environ[POLL_ENV] = POLL_S
    try:
        return trainer.fit()
    finally:
        if set_poll:
            os.environ.pop(POLL_ENV, None)
