"""Stage `rl`: on-policy RL from πθ1 on the hard queries (GRPO by default; PPO, GSPO).

    summary = run_rl(cfg, "<run_dir>/ckpt/sft1", "ckpt/rl")

One RL step, in every Ray Train worker:
  1. rollout   each worker takes its share of the step's prompts and runs G episodes per
               prompt through the agent loop with tools — with an engine inside the worker
               (`rl.rollout_engine: inprocess`) or through the Policy deployment (`serve`);
  2. scoring   the scorer grades every trajectory (an episode cut off before its answer
               scores 0; the rubric weighs `rl.rubric_weight`); workers exchange their
               groups so every worker sees the whole batch; for GRPO/GSPO, a group whose
               verdicts are all equal (`rl.filter_on: verified`; `reward`: all rewards) has
               nothing to compare and is dropped, and more prompts are drawn until
               `prompts_per_step` groups are kept or the refills run out (sample_groups);
  3. update    advantages (group-relative for GRPO/GSPO, divided by the group's std unless
               `rl.norm_adv_by_std` is off, as in Dr. GRPO; GAE with a critic for PPO),
               old log-probs recomputed by the trainer (each rank its share), then
               `rl.mini_batches` optimizer steps. Every loss is the mean over the whole
               mini-batch's tokens (or sequences), however ranks and micro-batches split it;
  4. sync      the new weights go to the rollout engine: in place for the in-process engine,
               `Policy.reload` on Ray Serve.
Prompts: the hard set re-measured with SFT-1 (stages/remeasure.py), most uncertain first on
the first pass (`rl.prompt_order: curriculum`), shuffled after. Per step the metrics hold
the verified rate beside the shaped reward, the kept groups' share with mixed verdicts and
how much of the advantages the verdict explains; train/<name>_prompts.jsonl lists every
prompt drawn and whether its group was trained on.
The trainer's log-probs on freshly rolled-out tokens are compared with the engine's
(`logprob_gap`): after a correct weight push they agree to float precision, so a stale
engine shows up at once. Checkpoints (model, optimizer, critic, step, prompt cursor, RNG,
metric history) go through Ray Train, so a killed run resumes.
"""

from __future__ import annotations

import math
import os
import posixpath
import signal
import tempfile
import time
from collections import Counter

import numpy as np
import torch

from stagent_ray.loggers import report_progress
from stagent_ray.runio import write_jsonl
from stagent_ray.train import losses as L
from stagent_ray.train.common import (adamw, all_reduce_sum, attention_for, export_hf,
                                      fit_on_ray_train, grad_norm_and_clip, load_for_training,
                                      load_train_state, local_model_dir, publish_dir,
                                      save_train_state, shard_model)
from stagent_ray.train.groups import (episode_advantages, sample_groups, take_prompts,
                                      verdict_share)


class ValueModel(torch.nn.Module):
    """PPO critic: the policy's transformer body with a scalar head per token."""

    def __init__(self, path: str):
        super().__init__()
        from transformers import AutoModel

        self.body = AutoModel.from_pretrained(local_model_dir(path), dtype=torch.float32)
        self.head = torch.nn.Linear(self.body.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)
        self._no_split_modules = self.body._no_split_modules  # read by shard_model

    def forward(self, input_ids, attention_mask):
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask,
                           use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1)                           # [B, T]


def pad_batch(seqs: list[dict], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-pad sequences; targets are shifted by one (position t predicts token t+1)."""
    T = max(len(s["token_ids"]) for s in seqs) - 1
    B = len(seqs)
    ids = torch.full((B, T + 1), pad_id, dtype=torch.long)
    mask, old_lp, adv = (torch.zeros(B, T) for _ in range(3))
    attn = torch.zeros(B, T, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s["token_ids"])
        ids[i, :n] = torch.tensor(s["token_ids"])
        attn[i, :n - 1] = 1
        mask[i, :n - 1] = torch.tensor(s["loss_mask"][1:], dtype=torch.float)
        old_lp[i, :n - 1] = torch.tensor(s["logprobs"][1:], dtype=torch.float)
        adv[i] = s["advantage"]
    return {"inputs": ids[:, :-1].to(device), "targets": ids[:, 1:].to(device),
            "attention_mask": attn.to(device), "mask": mask.to(device),
            "rollout_logprobs": old_lp.to(device), "advantage": adv.to(device)}


def sequence_logprobs(model, batch: dict, temperature: float, with_entropy: bool = False):
    """Log-probs of the targets [B, T] (and entropies [B, T]); 0 at positions where no row of
    the batch has a sampled token. Logits are computed only at the other positions
    (`logits_to_keep` takes indices): prompts and tool outputs, most of a sequence, never
    need the [B, T, V] logits."""
    keep = torch.nonzero(batch["mask"].any(0)).squeeze(-1)             # [K]
    logits = model(input_ids=batch["inputs"], attention_mask=batch["attention_mask"],
                   use_cache=False, logits_to_keep=keep).logits        # [B, K, V]
    logp = torch.zeros_like(batch["mask"])
    logp[:, keep] = L.token_logprobs(logits, batch["targets"][:, keep], temperature)
    entropy = None
    if with_entropy:
        entropy = torch.zeros_like(batch["mask"])
        entropy[:, keep] = L.entropy_from_logits(logits.float() / temperature)
    return logp, entropy


def rl_loop(config: dict) -> None:
    """Runs in every Ray Train worker. config: the Config itself (`cfg`), the run's name,
    the init checkpoint, the prompts (an object ref) and the Serve app, if any (run_rl)."""
    import ray
    import ray.train
    import ray.train.torch
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from stagent_ray.reward import make_scorer, score_episode
    from stagent_ray.rollout.agent_loop import run_episodes, sum_faults
    from stagent_ray.rollout.engine import SamplingParams, derive_seed
    from stagent_ray.rollout.engines import with_faults
    from stagent_ray.tasks.query import Query
    from stagent_ray.world.backends import executor_from_config

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.get_local_world_size()))
    cfg = config["cfg"]
    rl, init = cfg.rl, config["init_checkpoint"]
    prompts = ray.get(config["prompts_ref"])
    executor = executor_from_config(cfg.world, cfg.faults)
    score_trajectory = make_scorer(cfg.reward, rl.rubric_weight)

    torch.manual_seed(cfg.seed)
    attn = attention_for(device, packed=False)  # padded rows with an attention mask
    model = shard_model(load_for_training(init, attn_implementation=attn), device)
    optimizer = adamw(model, rl.lr, rl.weight_decay, device)
    critic = critic_opt = None
    if rl.algorithm == "ppo":
        critic = shard_model(ValueModel(init), device)
        critic_opt = adamw(critic, rl.critic_lr, 0.0, device)
    ref = None
    if rl.kl_coef > 0:
        # The frozen reference (the init checkpoint), sharded like the policy: a full copy
        # per GPU would not fit for the models FSDP is for, and the same mixed precision
        # keeps the KL free of a bf16-vs-fp32 offset. Its forwards are collective too; they
        # run in lockstep with the policy's (update_policy).
        ref = load_for_training(init, attn_implementation=attn)
        ref = shard_model(ref.eval().requires_grad_(False), device)

    if rl.rollout_engine == "serve":
        from ray import serve

        from stagent_ray.models.build import load_tokenizer
        from stagent_ray.serve.deployments import ServePolicyEngine
        policy_handle = serve.get_deployment_handle("Policy", app_name=config["serve_app"])
        engine = serve_engine = ServePolicyEngine(policy_handle, load_tokenizer(init))
    else:
        from stagent_ray.rollout.hf_engine import HFEngine
        engine = HFEngine(local_model_dir(init), device=str(device), dtype=cfg.policy.dtype,
                          max_batch_size=cfg.policy.max_batch_size, compile=cfg.policy.compile)
    engine = with_faults(engine, cfg.faults)  # garbage generations, when injected
    tokenizer = engine.tokenizer

    def push_weights(version: int) -> None:
        """Collective: every rank gathers the full weights for its in-process engine; with
        Serve, rank 0 writes a checkpoint and every Policy replica reloads it."""
        if rl.rollout_engine == "serve":
            path = posixpath.join(config["sync_dir"], f"v{version:06d}")
            export_hf(model, init, path, rank)
            if rank == 0:
                serve_engine.push_weights(path, version)
            dist.barrier()
            serve_engine.pushed = (path, version)  # every rank: a stale answer is sent again
            return
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        engine.load_weights({k: v.detach().to("cpu") if device.type == "cpu" else v
                             for k, v in full.items()})

    start, cursor, history, drawn = 0, 0, [], []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            state = load_train_state(d, model, optimizer, rank)
            if critic is not None:
                load_train_state(os.path.join(d, "critic"), critic, critic_opt, rank)
        start, cursor, history = state["step"], state["cursor"], state["history"]
        drawn = state.get("drawn", [])
    if start > 0 or rl.rollout_engine == "serve":
        push_weights(start)

    sampling_base = dict(temperature=rl.temperature, top_p=cfg.sampling.top_p,
                         top_k=cfg.sampling.top_k, max_new_tokens=cfg.sampling.max_new_tokens)
    G, P = rl.group_size, rl.prompts_per_step
    # Dynamic sampling (DAPO) drops groups whose rewards are all equal: their group-relative
    # advantages are zero. PPO's advantages come from the critic, not the group, so such
    # groups still teach it (and the critic must see all-pass / all-fail prompts too).
    filter_groups = rl.dynamic_sampling and rl.algorithm != "ppo"
    for step in range(start, rl.steps):
        if config["fail_at_step"] == step + 1 and rank == 0:
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection for the resume test
        times = {"rollout": 0.0, "scoring": 0.0, "update": 0.0, "sync": 0.0}
        step_start = time.perf_counter()

        # 1-2. rollouts, scoring and dynamic sampling --------------------------------
        step_faults = Counter()  # faults met by this rank's episodes (config.FaultConfig)

        def draw(count: int, round_: int) -> list[list[dict]]:
            """Roll out and score `count` new prompts (this rank its share); every rank
            gets all the groups."""
            nonlocal cursor
            idx = take_prompts(len(prompts), cursor, count, cfg.seed, config["curriculum"])
            cursor += count
            t = time.perf_counter()
            queries = [Query.from_dict(prompts[i]) for i in idx[rank::world]]
            trajs = run_episodes(engine, executor,
                                 [(q.query_id, q.text) for q in queries for _ in range(G)],
                                 SamplingParams(**sampling_base, seed=derive_seed(
                                     cfg.seed, f"rl{step}", round_, rank)), cfg.agent,
                                 fault_key=f"rl{step}/{round_}/{rank}") if queries else []
            times["rollout"] += time.perf_counter() - t
            t = time.perf_counter()
            groups = []
            for j, q in enumerate(queries):
                group = []
                for tr in trajs[j * G:(j + 1) * G]:
                    step_faults.update(tr.faults)
                    # the tool backend failed, not the model: kept as a marked episode that
                    # is no outcome (keep_group) and gets no advantage (episode_advantages)
                    if tr.infra_fault:
                        step_faults["infra_faulted_episodes"] += 1
                    score = None if tr.infra_fault else score_episode(
                        score_trajectory, q, tr.messages, tr.stop_reason)
                    group.append({"query_id": q.query_id, "token_ids": tr.token_ids,
                                  "logprobs": tr.logprobs, "loss_mask": tr.loss_mask,
                                  "infra_fault": bool(tr.infra_fault),
                                  "reward": float(score.value) if score else 0.0,
                                  "verified": bool(score and score.verified),
                                  "tool_calls": tr.num_tool_calls, "tool_errors": tr.num_tool_errors,
                                  "gen_tokens": int(sum(tr.loss_mask))})
                groups.append(group)
            times["scoring"] += time.perf_counter() - t
            gathered = [None] * world
            dist.all_gather_object(gathered, groups)
            return [g for part in gathered for g in part]

        kept, counts, sampled = sample_groups(draw, P, rl.max_refill_rounds,
                                              rl.filter_on if filter_groups else None)
        episodes = [e for g in sampled for e in g if not e["infra_fault"]]
        drawn += [{"step": step + 1, "query_id": g[0]["query_id"],
                   "kept": any(g is k for k in kept)} for g in sampled]

        # 3. advantages and update ---------------------------------------------------
        t = time.perf_counter()
        seqs = []
        for g in kept:
            for e, a in zip(g, episode_advantages(g, rl.norm_adv_by_std)):
                if not e["infra_fault"]:  # advantage 0: no gradient, and out of the token mean
                    seqs.append({**e, "advantage": a})
        stats = {"policy_loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "entropy": 0.0,
                 "logprob_gap": 0.0, "logprob_gap_max": 0.0, "value_loss": 0.0,
                 "grad_norm": 0.0}
        if seqs:
            stats.update(update_policy(seqs, model, optimizer, critic, critic_opt, ref, rl,
                                       rank, world, device, tokenizer.pad_token_id))
        times["update"] = time.perf_counter() - t
        if rl.max_logprob_gap and stats["logprob_gap_max"] > rl.max_logprob_gap:  # same on all ranks
            raise RuntimeError(f"rl step {step + 1}: log-prob gap {stats['logprob_gap_max']:.3g} "
                               f"between the rollout engine and the trainer exceeds "
                               f"rl.max_logprob_gap={rl.max_logprob_gap:g}: the engine sampled "
                               "with other weights (a replica that missed a weight push?)")
        t = time.perf_counter()
        if seqs:
            push_weights(step + 1)
        times["sync"] = time.perf_counter() - t

        # 4. metrics and checkpoints -------------------------------------------------
        rewards = [e["reward"] for e in episodes]
        n_ep = max(1, len(episodes))
        adv_values = [s["advantage"] for s in seqs] or [0.0]
        metrics = {
            "step": step + 1, "reward_mean": float(np.mean(rewards)) if rewards else 0.0,
            "reward_std": float(np.std(rewards)) if rewards else 0.0,
            # the verdict itself, beside the shaped reward: what RL is meant to raise
            "verified_rate": sum(e["verified"] for e in episodes) / n_ep,
            "verified_rate_kept": sum(s["verified"] for s in seqs) / max(1, len(seqs)),
            **counts, "filtered_frac": 1 - counts["groups_informative"]
            / max(1, counts["groups_sampled"]),
            "verdict_adv_share": verdict_share(seqs),
            "adv_mean": float(np.mean(adv_values)), "adv_std": float(np.std(adv_values)),
            "adv_min": float(np.min(adv_values)), "adv_max": float(np.max(adv_values)),
            "tool_calls_per_episode": sum(e["tool_calls"] for e in episodes) / n_ep,
            "tool_errors_per_episode": sum(e["tool_errors"] for e in episodes) / n_ep,
            "response_tokens": sum(e["gen_tokens"] for e in episodes) / n_ep,
            **stats, **{f"time_{k}_s": v for k, v in times.items()},
            # wall clock of the whole step on rank 0: the parts above plus waiting for the
            # other ranks (the exchange of groups, collectives)
            "time_step_s": time.perf_counter() - step_start,
            "start_step": start,
        }
        fault_parts = [None] * world
        dist.all_gather_object(fault_parts, dict(step_faults))
        metrics.update({f"faults_{k}": v for k, v in sum_faults(fault_parts).items()})
        history.append(metrics)
        done = step + 1
        if rank == 0:
            write_jsonl(cfg.run_dir, f"train/{config['name']}_metrics.jsonl", history)
            write_jsonl(cfg.run_dir, f"train/{config['name']}_prompts.jsonl", drawn)
            report_progress(config["name"], done, rl.steps, metrics["time_step_s"], {
                "reward": metrics["reward_mean"], "verified": metrics["verified_rate"],
                "tokens_per_s": sum(e["gen_tokens"] for e in episodes) / metrics["time_step_s"]})
        if done % rl.checkpoint_every == 0 or done == rl.steps:
            with tempfile.TemporaryDirectory() as d:
                save_train_state(d, model, optimizer, rank,
                                 {"step": done, "cursor": cursor, "history": history,
                                  "drawn": drawn})
                if critic is not None:
                    os.makedirs(os.path.join(d, "critic"), exist_ok=True)
                    save_train_state(os.path.join(d, "critic"), critic, critic_opt, rank, {})
                if done == rl.steps:
                    export_hf(model, init, os.path.join(d, "hf"), rank)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                                 checkpoint_dir_name=f"step_{done:06d}")
        elif done % rl.log_every == 0:
            ray.train.report(metrics)


def update_policy(seqs, model, optimizer, critic, critic_opt, ref, rl, rank, world, device,
                  pad_id) -> dict:
    """Old log-probs, advantages (GAE for PPO), then `rl.mini_batches` optimizer steps.
    Every rank holds the whole batch and trains on its slice of each mini-batch."""
    import torch.distributed as dist

    T_temp = rl.temperature
    mb_size = rl.micro_batch_size

    # Old log-probs (and reference log-probs, values) with the weights that produced the
    # rollouts. Each rank scores its share only (scoring the whole batch on every rank would
    # cost `world` times the compute), then the ranks exchange the results.
    model.eval()
    share = list(range(rank, len(seqs), world))
    # The same number of forwards on every rank (FSDP all-gathers are collective): the largest
    # share sets it, a rank with a smaller share runs dummy forwards.
    n_chunks = math.ceil(math.ceil(len(seqs) / world) / mb_size)
    scored, gap_sum, gap_count, gap_max = {}, 0.0, 0, 0.0
    with torch.no_grad():
        for c in range(n_chunks):
            idx = share[c * mb_size:(c + 1) * mb_size]
            batch = pad_batch([seqs[i] for i in idx] or [seqs[0]], pad_id, device)
            logp, _ = sequence_logprobs(model, batch, T_temp)
            ref_lp = sequence_logprobs(ref, batch, T_temp)[0] if ref is not None else None
            if critic is not None:
                values = critic(batch["inputs"], batch["attention_mask"]) * batch["mask"]
                rewards = torch.zeros_like(values)
                for j, i in enumerate(idx):  # the trajectory reward lands on its last token
                    sampled = torch.nonzero(batch["mask"][j])
                    if sampled.numel():
                        rewards[j, int(sampled.max())] = seqs[i]["reward"]
                # Tool-response tokens are off the mask: GAE bootstraps across them.
                adv, ret = L.gae(rewards, values, batch["mask"], rl.gamma, rl.lam)
            for j, i in enumerate(idx):
                n = len(seqs[i]["token_ids"]) - 1
                m = batch["mask"][j, :n] > 0
                diff = (logp[j, :n] - batch["rollout_logprobs"][j, :n]).abs()[m]
                gap_sum, gap_count = gap_sum + float(diff.sum()), gap_count + diff.numel()
                gap_max = max(gap_max, float(diff.max()) if diff.numel() else 0.0)
                out = {"old_logprobs": logp[j, :n].cpu().tolist()}
                if ref_lp is not None:
                    out["ref_logprobs"] = ref_lp[j, :n].cpu().tolist()
                if critic is not None:
                    out.update(token_adv=adv[j, :n].cpu().tolist(),
                               returns=ret[j, :n].cpu().tolist(),
                               old_values=values[j, :n].cpu().tolist())
                scored[i] = out
    gathered = [None] * world
    dist.all_gather_object(gathered, scored)
    for part in gathered:
        for i, out in part.items():
            seqs[i].update(out)
    gap_mean = all_reduce_sum(gap_sum, device) / max(1.0, all_reduce_sum(gap_count, device))
    gap_max = all_reduce_max(gap_max, device)
    if critic is not None:  # whiten token advantages over the batch
        flat = torch.tensor([a for s in seqs for a, m in zip(s["token_adv"], s["loss_mask"][1:]) if m])
        if flat.numel() > 1:
            mean, std = float(flat.mean()), float(flat.std().clamp(min=1e-6))
            for s in seqs:
                s["token_adv"] = [(a - mean) / std for a in s["token_adv"]]

    model.train()
    stats = {"policy_loss": 0.0, "clip_frac": 0.0, "kl": 0.0, "entropy": 0.0,
             "value_loss": 0.0, "grad_norm": 0.0}
    n_mini = min(rl.mini_batches, len(seqs))
    for k in range(n_mini):
        mini = seqs[k::n_mini]
        mine = mini[rank::world]
        # Global normalisers: each micro-batch's loss is weighted by its share of the whole
        # mini-batch (all ranks): tokens for token-level terms, sequences for sequence-level
        # ones. Summed over micro-batches and ranks, that is the mini-batch's mean.
        total_tokens = max(1, sum(sum(s["loss_mask"][1:]) for s in mini))
        total_seqs = len(mini)
        total_scored = max(1, sum(1 for s in mini if any(s["loss_mask"][1:])))  # GSPO's count
        # Ranks must run the same number of forward/backward passes (FSDP collectives): the
        # largest share sets it; dummy passes (weight 0) fill the others.
        n_chunks = math.ceil(math.ceil(len(mini) / world) / mb_size)
        for c in range(n_chunks):
            chunk, scale = mine[c * mb_size:(c + 1) * mb_size], 1.0
            if not chunk:
                chunk, scale = [mini[0]], 0.0
            batch = pad_batch(chunk, pad_id, device)
            for key in ("old_logprobs", "ref_logprobs", "token_adv", "returns", "old_values"):
                if key in chunk[0]:
                    t = torch.zeros_like(batch["mask"])
                    for i, s in enumerate(chunk):
                        t[i, :len(s[key])] = torch.tensor(s[key])
                    batch[key] = t
            logp, entropy = sequence_logprobs(model, batch, T_temp, with_entropy=True)
            m = batch["mask"]
            token_w = scale * float(m.sum()) / total_tokens
            if rl.algorithm == "gspo":
                # gspo_policy_loss averages over the sequences that have sampled tokens
                loss, clip = L.gspo_policy_loss(logp, batch["old_logprobs"],
                                                batch["advantage"][:, 0], m,
                                                rl.gspo_clip_low, rl.gspo_clip_high)
                weight = scale * float((m.sum(-1) > 0).sum()) / total_scored
            else:
                adv = batch["token_adv"] if rl.algorithm == "ppo" else batch["advantage"]
                loss, clip = L.clipped_policy_loss(logp, batch["old_logprobs"], adv, m,
                                                   rl.clip_low, rl.clip_high, rl.loss_agg)
                weight = token_w if rl.loss_agg == "token-mean" else scale * len(chunk) / total_seqs
            # Entropy and KL are token-level terms whatever the policy loss aggregates.
            ent = L.masked_mean(entropy, m)
            total = loss * weight - rl.entropy_coef * ent * token_w
            if ref is not None:
                kl = L.masked_mean(L.kl_penalty(logp, batch["ref_logprobs"], rl.kl_estimator), m)
                total = total + rl.kl_coef * kl * token_w
                stats["kl"] += float(kl.detach()) * token_w / n_mini
            # FSDP averages gradients over ranks; x world turns that into the sum of the shares.
            (total * world).backward()
            stats["policy_loss"] += float(loss.detach()) * weight / n_mini
            stats["clip_frac"] += float(clip) * weight / n_mini
            stats["entropy"] += float(ent.detach()) * token_w / n_mini
            if critic is not None:
                values = critic(batch["inputs"], batch["attention_mask"])
                vloss = L.value_loss(values, batch["old_values"], batch["returns"], m)
                (rl.vf_coef * vloss * token_w * world).backward()
                stats["value_loss"] += float(vloss.detach()) * token_w / n_mini
        stats["grad_norm"] += float(grad_norm_and_clip(model, rl.grad_clip)) / n_mini
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if critic is not None:
            grad_norm_and_clip(critic, rl.grad_clip)
            critic_opt.step()
            critic_opt.zero_grad(set_to_none=True)
    # Each rank summed only its own share of the statistics.
    for key in ("policy_loss", "clip_frac", "kl", "entropy", "value_loss"):
        stats[key] = all_reduce_sum(stats[key], device)
    stats["logprob_gap"], stats["logprob_gap_max"] = gap_mean, gap_max
    dist.barrier()
    return stats


def all_reduce_max(x: float, device) -> float:
    import torch.distributed as dist

    t = torch.tensor(float(x), device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def rl_prompts(cfg) -> tuple[list[dict], str]:
    """The prompts RL trains on and the set they are (the one place this is decided), in
    their order: `rl.prompt_set` all = the whole pool; hard = the hard queries joined with
    the pool for their ground truth, most uncertain first: those re-measured on SFT-1
    (data/hard_sft1.parquet, "hard_sft1") when `rl.remeasure` is on, else the split's
    (data/hard.parquet, measured on πθ0). An empty set falls back, said on stderr: the
    re-measured one to the split's, the split's to the whole pool ("all")."""
    import sys

    from stagent_ray.runio import exists, read_table

    pool = read_table(cfg.run_dir, "data/pool.parquet")
    if cfg.rl.prompt_set == "all":
        return pool, "all"
    by_id = {r["query_id"]: r for r in pool}
    tables = [("data/hard.parquet", "hard")]
    if cfg.rl.remeasure:
        tables.insert(0, ("data/hard_sft1.parquet", "hard_sft1"))
    for table, name in tables:
        if not exists(cfg.run_dir, table):
            continue
        hard = [by_id[r["query_id"]] for r in read_table(cfg.run_dir, table)
                if r["query_id"] in by_id]
        if hard:
            return hard, name
        print(f"[rl] no queries in {table} (see data/split_report.json, "
              "data/remeasure_report.json)", file=sys.stderr)
    print("[rl] no hard queries; RL runs on the whole pool", file=sys.stderr)
    return pool, "all"


def run_rl(cfg, init_checkpoint: str, out_relative: str, *, failure_config=None,
           fail_at_step: int | None = None, prompts: list[dict] | None = None,
           name: str = "rl") -> dict:
    """Train from `init_checkpoint` on `prompts` (default: rl_prompts(cfg)); export to
    `<run_dir>/<out_relative>`. `name` keys the run's checkpoints and metrics (train/<name>,
    train/<name>_metrics.jsonl): another name is another run (the cascade benchmark's
    ablations)."""
    import ray

    from stagent_ray.runio import run_path

    run_dir, rl = cfg.run_dir, cfg.rl
    prompt_set = "given"
    if prompts is None:
        prompts, prompt_set = rl_prompts(cfg)
    if not prompts:
        raise ValueError("rl: no prompts to train on (data/pool.parquet is empty?)")
    serve_app = None
    if rl.rollout_engine == "serve":
        from stagent_ray.serve.deployments import deploy_policy
        serve_app = f"{name}_policy"
        deploy_policy(init_checkpoint, cfg.policy, cfg.serve, name=serve_app)
    config = {"cfg": cfg, "init_checkpoint": init_checkpoint, "prompts_ref": ray.put(prompts),
              # the hard sets come most uncertain first; the pool has no such order
              "curriculum": rl.prompt_order == "curriculum" and prompt_set.startswith("hard"),
              "fail_at_step": fail_at_step, "serve_app": serve_app, "name": name,
              "sync_dir": run_path(run_dir, f"train/{name}_sync")}
    try:
        result = fit_on_ray_train(rl_loop, config, name, run_dir, rl.num_workers, failure_config)
    finally:
        if serve_app:
            from ray import serve
            serve.delete(serve_app)
    ckpt, metrics = result.checkpoint, result.metrics or {}
    if ckpt is None or metrics.get("step") != rl.steps:
        raise RuntimeError(f"rl: training ended without its final checkpoint (last: {metrics})")
    path = publish_dir(ckpt.filesystem, posixpath.join(ckpt.path, "hf"), run_dir, out_relative)
    history = read_history(run_dir, name)
    first = history[: max(1, len(history) // 4)]
    last = history[-max(1, len(history) // 4):]
    mean = lambda rows, key: float(np.mean([h[key] for h in rows]))  # noqa: E731
    return {"steps": rl.steps, "path": path, "resumed_from_step": metrics["start_step"],
            "prompts": len(prompts), "prompt_set": prompt_set,
            "hard_set_empty": cfg.rl.prompt_set == "hard" and prompt_set == "all",
            "remeasured_set_empty": cfg.rl.prompt_set == "hard" and cfg.rl.remeasure
            and prompt_set != "hard_sft1",
            "reward_first_quarter": mean(first, "reward_mean"),
            "reward_last_quarter": mean(last, "reward_mean"),
            "verified_first_quarter": mean(first, "verified_rate"),
            "verified_last_quarter": mean(last, "verified_rate"),
            "kept_mixed_verdict_share": mean(history, "kept_mixed_verdict_share"),
            "sampled_mixed_verdict_share": mean(history, "sampled_mixed_verdict_share"),
            "groups_short_total": sum(h["groups_short"] for h in history),
            "refill_rounds_mean": mean(history, "refill_rounds"),
            "logprob_gap_max": max(h["logprob_gap_max"] for h in history),
            "faults": history_faults(history),
            "time_split_s": {k: float(np.mean([h[f"time_{k}_s"] for h in history]))
                             for k in ("rollout", "scoring", "update", "sync", "step")}}


def read_history(run_dir: str, name: str = "rl") -> list[dict]:
    from stagent_ray.runio import read_jsonl

    return read_jsonl(run_dir, f"train/{name}_metrics.jsonl")


def history_faults(history: list[dict]) -> dict:
    """Fault totals of an RL run, from the `faults_<kind>` entries of its metric rows."""
    from stagent_ray.rollout.agent_loop import sum_faults

    prefix = "faults_"
    return sum_faults({k[len(prefix):]: v for k, v in h.items() if k.startswith(prefix)}
                      for h in history)
