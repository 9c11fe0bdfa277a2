"""Rollouts at scale: Ray Data streams query rows through actors that run N scored
episodes per query and write their rows to Parquet part files as they finish.

Used by `tiny_qa` (teacher, K attempts), `score` (πθ0, N rollouts), `split` (teacher
recovery of all-fail queries) and `eval` (every checkpoint through one actor pool); the
actors are sized by the config's `rollout:` section. Resume is by query_id: a restart reads the part files already
written and only sends the rest; each part is written under a temporary name and renamed,
so a killed run never leaves a partial part that looks complete. Consolidation drops any
query_id that a retried batch wrote twice. The pool is cut into fixed batches (pool order,
`batch_size` queries) before anything runs, so a resumed or retried batch holds the same
queries, samples with the same seed and gives the same rows as in an uninterrupted run.

Faults: an episode hit by a tool-infrastructure fault (see agent_loop.py) is rolled out
again up to `faults.episode_rerolls` times; one still hit is kept in the trajectory table
with `infra_fault` set and left out of its query's rewards, pass counts and best pick. Every
row carries the fault counts of its episodes (`faults`, JSON), so the stage totals survive a
restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import Counter

import numpy as np

from stagent_ray.rollout.agent_loop import sum_faults
from stagent_ray.runio import filesystem, read_table, run_path, write_table
from stagent_ray.tasks.query import Query

logger = logging.getLogger(__name__)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c passes (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_count_histogram(rows: list[dict]) -> list[int]:
    """How many scored queries passed 0, 1, ..., N of their N rollouts."""
    n = max((r["n"] for r in rows), default=0)
    return [sum(sum(r["verified"]) == k for r in rows) for k in range(n + 1)]


def summarise_query(query_row: dict, all_trajs: list[dict]) -> dict:
    """The per-query row of a scored pool, from its N scored trajectories. Episodes marked
    `infra_fault` are not the model's doing: they count in `infra_faulted` only."""
    trajs = [t for t in all_trajs if not t.get("infra_fault")]  # rows of older runs lack it
    if not trajs:
        raise RuntimeError(f"query {query_row['query_id']}: every episode failed on the tool "
                           f"backend even after retries and re-rolls; is the backend up?")
    rewards = [t["reward"] for t in trajs]
    verified = [t["verified"] for t in trajs]
    n, c = len(trajs), sum(verified)
    p = c / n
    best = max(range(n), key=lambda i: (verified[i], rewards[i], -i))
    return {
        "query_id": query_row["query_id"], "family": query_row["family"],
        "difficulty": query_row["difficulty"], "text": query_row["text"],
        "n": n, "rewards": rewards, "verified": verified,
        "mean_reward": float(np.mean(rewards)), "var_reward": float(np.var(rewards)),
        "pass_rate": p, "pass_at_1": pass_at_k(n, c, 1), "pass_at_k": pass_at_k(n, c, n),
        "learnability": p * (1.0 - p),
        "tokens": int(sum(t["num_generated_tokens"] for t in trajs)),
        "tool_calls": int(sum(t["num_tool_calls"] for t in trajs)),
        "tool_errors": int(sum(t["num_tool_errors"] for t in trajs)),
        "best_index": best, "best_reward": rewards[best], "best_verified": verified[best],
        "best_messages": trajs[best]["messages"],
        "infra_faulted": len(all_trajs) - n,
        "faults": json.dumps(sum_faults(t.get("faults") or {} for t in all_trajs)),
    }


class RolloutActor:
    """One Ray Data actor: an engine, a tool executor and the scorer, built once.

    `engine` (an EngineConfig): kind hf | vllm is a token engine inside the actor for the
    checkpoint `engine.model` (`policy_engine`); oracle | openai a message engine. With
    `serve_app`, tokens come from that app's Policy deployment instead (tokenizer from
    `engine.model`).
    """

    def __init__(self, cfg, engine, n: int, parts_dir: str, salt: int = 0,
                 temperature: float | None = None, serve_app: str | None = None):
        import torch

        from stagent_ray.rollout.engines import with_faults
        from stagent_ray.world.backends import executor_from_config

        torch.set_num_threads(1)
        self.cfg, self.run_dir = cfg, cfg.run_dir
        self.executor = executor_from_config(cfg.world, cfg.faults)
        self.n, self.parts_dir, self.salt = n, parts_dir, salt
        self.model = engine.model
        self.token_engine = self.message_engine = None
        if serve_app:  # a Policy (tokens) or a Teacher (conversations) deployment
            from stagent_ray.serve.deployments import ServePolicyEngine, serve_client_engine
            client = serve_client_engine(serve_app, engine)
            if isinstance(client, ServePolicyEngine):
                self.token_engine = client
            else:
                self.message_engine = with_faults(client, cfg.faults)
        elif engine.kind in ("hf", "vllm"):
            from stagent_ray.rollout.engines import make_token_engine
            self.token_engine = make_token_engine(
                engine.kind, engine.model, device=engine.device, dtype=engine.dtype,
                max_batch_size=engine.max_batch_size, compile=engine.compile)
        else:
            from stagent_ray.rollout.engines import make_message_engine
            self.message_engine = with_faults(make_message_engine(
                engine, self.executor.schemas()), cfg.faults)
        if self.token_engine is not None:
            self.token_engine = with_faults(self.token_engine, self.cfg.faults)
        from stagent_ray.reward import make_scorer

        self.score = make_scorer(self.cfg.reward, self.cfg.score.rubric_weight)
        s = self.cfg.sampling
        self.temperature = s.temperature if temperature is None else temperature
        self._metrics()

    def _metrics(self):
        from ray.util import metrics

        self.traj_counter = metrics.Counter(
            "stagent_trajectories", "Scored trajectories", tag_keys=("stage",))
        self.reward_gauge = metrics.Gauge(
            "stagent_mean_reward", "Mean reward of the last batch", tag_keys=("stage",))

    def run(self, episodes: list[tuple], fault_key: str) -> list:
        """Roll out each (query, rollout index) once."""
        from stagent_ray.rollout.agent_loop import run_episodes, run_message_episodes
        from stagent_ray.rollout.engine import SamplingParams, derive_seed

        agent = self.cfg.agent
        # the run's seed enters every episode's: another seed, other samples and teacher noise
        seeds = [derive_seed(self.cfg.seed, q.query_id, i, self.salt) for q, i in episodes]
        if self.message_engine is not None:
            return run_message_episodes(self.message_engine, self.executor,
                                        [q for q, _ in episodes], agent, seeds,
                                        fault_key=fault_key)
        s = self.cfg.sampling
        sampling = SamplingParams(temperature=self.temperature, top_p=s.top_p, top_k=s.top_k,
                                  max_new_tokens=s.max_new_tokens)
        return run_episodes(self.token_engine, self.executor,
                            [(q.query_id, q.text) for q, _ in episodes], sampling, agent,
                            fault_key, seeds)

    def rollout(self, queries: list) -> tuple[list, list[Counter]]:
        """N episodes per query. Those hit by a tool-infrastructure fault are rolled out
        again; the faults of each discarded attempt are returned per episode."""
        episodes = [(q, i) for q in queries for i in range(self.n)]
        trajs = self.run(episodes, "")
        discarded = [Counter() for _ in trajs]
        for r in range(1, self.cfg.faults.episode_rerolls + 1):
            redo = [k for k, t in enumerate(trajs) if t.infra_fault]
            if not redo:
                break
            for k, t in zip(redo, self.run([episodes[k] for k in redo], f"reroll{r}")):
                discarded[k] += trajs[k].faults
                discarded[k]["rerolled"] += 1
                trajs[k] = t
        return trajs, discarded

    def __call__(self, batch: dict) -> dict:
        """Each item of `batch["rows"]` is one fixed batch of query rows (JSON), to roll out
        with the checkpoint `batch["model"]` into `batch["parts_dir"]`."""
        out = {"query_id": [], "mean_reward": [], "n_traj": [], "parts_dir": []}
        for rows_json, model, parts_dir in zip(batch["rows"], batch["model"], batch["parts_dir"]):
            self.use_checkpoint(str(model), str(parts_dir))
            done = self.score_batch(json.loads(str(rows_json)))
            for key in out:
                out[key] += done[key]
        out["actor_pid"] = [os.getpid()] * len(out["query_id"])  # how far the pool grew
        return out

    def use_checkpoint(self, model: str, parts_dir: str) -> None:
        """Switch to another checkpoint of the same architecture by copying its weights into
        the engine: no new actor, no new engine (rollout_checkpoints)."""
        self.parts_dir = parts_dir
        if model and model != self.model:
            self.token_engine.load_weights(model)
            self.model = model

    def score_batch(self, rows: list[dict]) -> dict:
        from stagent_ray.reward import score_episode

        queries = [Query.from_dict(r) for r in rows]
        trajs, discarded = self.rollout(queries)
        traj_rows = []
        for k, t in enumerate(trajs):
            q = queries[k // self.n]
            score = score_episode(self.score, q, t.messages, t.stop_reason)
            traj_rows.append({
                "query_id": q.query_id, "rollout_index": k % self.n,
                "reward": float(score.value), "verified": bool(score.verified),
                "reason": score.reason, "parts": json.dumps(score.parts, sort_keys=True),
                "messages": json.dumps(t.messages, ensure_ascii=False),
                "token_ids": t.token_ids, "logprobs": t.logprobs, "loss_mask": t.loss_mask,
                "prompt_len": t.prompt_len, "num_generated_tokens": int(sum(t.loss_mask)),
                "num_turns": t.num_turns, "num_tool_calls": t.num_tool_calls,
                "num_tool_errors": t.num_tool_errors, "stop_reason": t.stop_reason,
                "wall_time_s": t.wall_time_s, "infra_fault": t.infra_fault,
                "faults": json.dumps(dict(sorted((t.faults + discarded[k]).items())))})
        summaries = [summarise_query(r, traj_rows[i * self.n:(i + 1) * self.n])
                     for i, r in enumerate(rows)]
        if self.cfg.faults.actor_crash_once:
            crash_once(self.run_dir, self.parts_dir)
        part = hashlib.sha1("".join(sorted(r["query_id"] for r in rows)).encode()).hexdigest()[:16]
        # Trajectories first, summaries last: a summary part exists only with its trajectories.
        write_table(self.run_dir, f"{self.parts_dir}/traj-{part}.parquet", traj_rows)
        write_table(self.run_dir, f"{self.parts_dir}/query-{part}.parquet", summaries)
        stage = self.parts_dir.rsplit("/", 1)[-1]
        self.traj_counter.inc(len(traj_rows), tags={"stage": stage})
        self.reward_gauge.set(float(np.mean([t["reward"] for t in traj_rows])), tags={"stage": stage})
        return {"query_id": [s["query_id"] for s in summaries],
                "mean_reward": [s["mean_reward"] for s in summaries],
                "n_traj": [len(traj_rows) // len(rows)] * len(rows),
                "parts_dir": [self.parts_dir] * len(rows)}


def crash_once(run_dir: str, parts_dir: str) -> None:
    """Fault injection (faults.actor_crash_once): the first actor of the stage to get here
    dies on the spot, its batch rolled out but not written. Ray restarts the actor and Data
    retries the batch. A marker file makes it once per stage."""
    from stagent_ray.runio import exists, write_json

    marker = f"{parts_dir}/_actor_crashed.json"
    if not exists(run_dir, marker):
        write_json(run_dir, marker, {"pid": os.getpid(), "time": time.time()})
        os._exit(1)


def list_parts(run_dir: str, parts_dir: str, prefix: str) -> list[str]:
    import pyarrow.fs as pafs

    fs, base = filesystem(run_path(run_dir, parts_dir))
    if fs.get_file_info(base).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(base))
    names = sorted(i.base_name for i in infos if i.base_name.startswith(prefix)
                   and i.base_name.endswith(".parquet"))
    return [f"{parts_dir}/{n}" for n in names]


def done_query_ids(run_dir: str, parts_dir: str) -> set[str]:
    done = set()
    for part in list_parts(run_dir, parts_dir, "query-"):
        done.update(r["query_id"] for r in read_table(run_dir, part, columns=["query_id"]))
    return done


def fault_totals(run_dir: str, parts_dir: str) -> dict:
    """Fault counts of every query written under `parts_dir` (each query_id once), and the
    episodes left out as infrastructure-faulted."""
    seen, faults, faulted = set(), [], 0
    for part in list_parts(run_dir, parts_dir, "query-"):
        for r in read_table(run_dir, part, columns=["query_id", "faults", "infra_faulted"]):
            if r["query_id"] not in seen:
                seen.add(r["query_id"])
                faults.append(r["faults"])
                faulted += r["infra_faulted"]
    return {"faults": sum_faults(faults), "infra_faulted_episodes": faulted}


def warn_if_unschedulable(cpus: float, gpus: float) -> None:
    """Ray Data waits silently for an actor the cluster cannot hold yet (an autoscaler may
    add it): say which setting asks for more than the cluster has now."""
    import ray

    have = ray.cluster_resources()
    for need, key, field in ((cpus, "CPU", "rollout.cpus_per_actor"),
                             (gpus, "GPU", "rollout.gpus_per_actor")):
        if need > have.get(key, 0):
            logger.warning("rollout actors wait for resources: %s=%g but the cluster has %g %s "
                           "now (waiting for an autoscaler?)", field, need, have.get(key, 0), key)


def actor_resources(r, num_gpus: float) -> dict:
    """What each rollout actor asks Ray for: CPUs, GPUs and, with GPUs, the GPU type."""
    pinned = {"accelerator_type": r.accelerator_type} if num_gpus and r.accelerator_type else {}
    return {"num_cpus": r.cpus_per_actor, "num_gpus": num_gpus, **pinned}


def check_prompts_fit(cfg, engine, query_rows: list[dict]) -> None:
    """Fail at stage start when the longest query's first prompt (system + tools + query,
    in the model's format) leaves no room under `agent.max_tokens`. A checkpoint on object
    storage is left to the actors' own check (agent_loop.check_prompt_budget): reading its
    tokenizer here would copy the whole model down to the driver."""
    if (engine.kind not in ("hf", "vllm") or not engine.model or "://" in engine.model
            or not query_rows):
        return
    from stagent_ray.models.build import load_tokenizer
    from stagent_ray.models.formats import format_for
    from stagent_ray.rollout.agent_loop import (check_prompt_budget, initial_messages,
                                                shown_tool_schemas)

    longest = max(query_rows, key=lambda q: len(q["text"]))
    shown = shown_tool_schemas(cfg.world, cfg.agent.tool_prompt)
    fmt = format_for(load_tokenizer(engine.model), cfg.agent)
    ids, _ = fmt.render_ids(initial_messages(longest["text"], cfg.agent.system_prompt), shown,
                            add_generation_prompt=True)
    check_prompt_budget(len(ids), cfg.agent.max_tokens, f"query {longest['query_id']}")


def policy_engine(cfg, model_path: str):
    """The in-actor engine (an EngineConfig) for a policy checkpoint: `cfg.policy` with its
    model set."""
    from dataclasses import replace

    return replace(cfg.policy, model=model_path)


def rollout_pool(cfg, query_rows: list[dict], engine, n: int, parts_dir: str, salt: int = 0,
                 temperature: float | None = None, desc: str = "rollouts",
                 serve_app: str | None = None) -> dict:
    """Stream `query_rows` through the `rollout:` section's actors, N episodes per query with
    `engine` (an EngineConfig); skip query_ids already written under `parts_dir`. Returns
    counts and throughput."""
    return rollout_checkpoints(cfg, query_rows, {parts_dir: engine}, n, salt, temperature,
                               desc, serve_app)[parts_dir]


def rollout_checkpoints(cfg, query_rows: list[dict], engines: dict, n: int, salt: int = 0,
                        temperature: float | None = None, desc: str = "rollouts",
                        serve_app: str | None = None) -> dict[str, dict]:
    """`rollout_pool` for several engines that differ only in their checkpoint (`engines`:
    parts_dir -> EngineConfig), through ONE pool of actors that copy in the next checkpoint's
    weights when its batches come (an actor and its engine take seconds to start, on a GPU
    tens). Returns rollout_pool's counts per parts_dir."""
    from dataclasses import replace

    import ray
    from tqdm import tqdm

    run_dir, r = cfg.run_dir, cfg.rollout
    engine = next(iter(engines.values()))
    if len(engines) > 1 and (engine.kind not in ("hf", "vllm") or any(
            replace(e, model=None) != replace(engine, model=None) for e in engines.values())):
        raise ValueError("rollout_checkpoints: the engines must be hf or vllm checkpoints "
                         f"that differ only in 'model': {engines}")
    # a policy engine may hold a GPU (rollout.gpus_per_actor); teachers never do here
    num_gpus = r.gpus_per_actor if engine.kind in ("hf", "vllm") and not serve_app else 0
    check_prompts_fit(cfg, engine, query_rows)
    items, n_todo = [], {}
    for parts_dir, spec in engines.items():  # in order: each actor switches model rarely
        done = done_query_ids(run_dir, parts_dir)
        batches = [[q for q in query_rows[i:i + r.batch_size] if q["query_id"] not in done]
                   for i in range(0, len(query_rows), r.batch_size)]
        items += [{"rows": json.dumps(b), "model": spec.model or "",
                   "parts_dir": parts_dir} for b in batches if b]
        n_todo[parts_dir] = sum(map(len, batches))
    start = time.perf_counter()
    n_traj, actors = Counter(), set()
    if items:
        warn_if_unschedulable(r.cpus_per_actor, num_gpus)
        # One item (and block) per batch: Ray Data cannot regroup the queries.
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(
            RolloutActor, batch_size=1, batch_format="numpy",
            fn_constructor_kwargs={"cfg": cfg, "engine": engine, "n": n,
                                   "parts_dir": next(iter(engines)), "salt": salt,
                                   "temperature": temperature, "serve_app": serve_app},
            compute=ray.data.ActorPoolStrategy(min_size=r.num_actors,
                                               max_size=r.max_actors or r.num_actors),
            **actor_resources(r, num_gpus))
        total = len(query_rows) * len(engines)
        with tqdm(total=total, initial=total - sum(n_todo.values()), desc=desc,
                  unit="query") as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                bar.update(len(batch["query_id"]))
                for parts_dir, k in zip(batch["parts_dir"], batch["n_traj"]):
                    n_traj[str(parts_dir)] += int(k)
                actors.update(int(pid) for pid in batch["actor_pid"])
                bar.set_postfix(reward=f"{float(np.mean(batch['mean_reward'])):.3f}")
    elapsed = time.perf_counter() - start
    return {parts_dir: {"queries": len(query_rows),
                        "resumed_skipped": len(query_rows) - n_todo[parts_dir],
                        "trajectories": n_traj[parts_dir], "seconds": elapsed,
                        "actors": len(actors),  # processes that rolled out, all engines
                        "trajectories_per_s": n_traj[parts_dir] / elapsed if elapsed > 0 else 0.0,
                        **fault_totals(run_dir, parts_dir)}
            for parts_dir in engines}


def consolidate(run_dir: str, parts_dir: str, query_out: str, traj_out: str | None,
                order: list[str] | None = None) -> list[dict]:
    """Merge part files into one table per kind, each query_id exactly once."""
    rows, part_of = [], {}
    for part in list_parts(run_dir, parts_dir, "query-"):
        for r in read_table(run_dir, part):
            if r["query_id"] not in part_of:
                part_of[r["query_id"]] = part.replace("/query-", "/traj-")
                rows.append(r)
    if order is not None:
        rank = {qid: i for i, qid in enumerate(order)}
        rows.sort(key=lambda r: rank.get(r["query_id"], len(rank)))
    if traj_out:
        # Take each query's trajectories from the part written with its summary, so an
        # orphan part (killed between the two writes, then redone) is never mixed in.
        trajs = []
        for part in sorted(set(part_of.values())):
            trajs += [t for t in read_table(run_dir, part) if part_of.get(t["query_id"]) == part]
        write_table(run_dir, traj_out, trajs)
    write_table(run_dir, query_out, rows)
    return rows

