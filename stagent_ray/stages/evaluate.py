"""Stage `eval`: the held-out eval set through the teacher and every checkpoint.

Each model answers every eval query greedily once (pass@1) and `eval.pass_k` times at
`eval.temperature` (pass@k; 0 skips these sampled runs), with the same agent loop, tools and
scorer as training. Per model, overall and per family: verified rate, mean reward, rubric
score, `[Unsolved]` accuracy on out-of-scope queries (and false `[Unsolved]` on solvable
ones), tool calls and tool errors per episode. An episode the tool backend failed
(`infra_fault`, see stages/rollouts.py) is not the model's doing: it is left out of these
numbers and counted beside them with the faults met. Outputs: eval/<model>.json and
eval/summary.json.
"""

from __future__ import annotations

import json

from stagent_ray.models.chat_format import UNSOLVED_MARKER


def final_answer(messages_json: str) -> str:
    messages = json.loads(messages_json)
    last = messages[-1] if messages else {}
    return last.get("content", "") if last.get("role") == "assistant" else ""


def summarise(trajs: list[dict], queries: dict[str, dict]) -> dict:
    """Metrics of one group of scored trajectories (one per query, or k per query)."""
    if not trajs:
        return {}
    n = len(trajs)
    out_of_scope = [t for t in trajs if queries[t["query_id"]]["difficulty"] == -1]
    solvable = [t for t in trajs if queries[t["query_id"]]["difficulty"] != -1]
    rubric = [json.loads(t["parts"]).get("rubric") for t in trajs]
    rubric = [r for r in rubric if r is not None]
    return {
        "episodes": n,
        "verified_rate": sum(t["verified"] for t in trajs) / n,
        "mean_reward": sum(t["reward"] for t in trajs) / n,
        "rubric": sum(rubric) / len(rubric) if rubric else None,
        "unsolved_accuracy": (sum(UNSOLVED_MARKER in final_answer(t["messages"])
                                  for t in out_of_scope)
                              / len(out_of_scope)) if out_of_scope else None,
        "false_unsolved_rate": (sum(UNSOLVED_MARKER in final_answer(t["messages"])
                                    for t in solvable)
                                / len(solvable)) if solvable else None,
        "tool_calls_per_episode": sum(t["num_tool_calls"] for t in trajs) / n,
        "tool_errors_per_episode": sum(t["num_tool_errors"] for t in trajs) / n,
    }


def evaluate_models(cfg, engines: dict, eval_rows: list[dict],
                    temperature_runs: list[tuple[str, float | None, int]],
                    out_dir: str = "eval") -> dict[str, dict]:
    """Eval results per model name; trajectories go to <out_dir>/<name>_<mode>_*.parquet.
    `engines`: name -> EngineConfig; policy checkpoints of one architecture share one pool of
    rollout actors per run (rollout_checkpoints)."""
    from stagent_ray.runio import read_table
    from stagent_ray.stages.rollouts import consolidate, rollout_checkpoints

    if not engines:
        return {}
    run_dir = cfg.run_dir
    queries = {r["query_id"]: r for r in eval_rows}
    results = {name: {"model": name} for name in engines}
    for mode, temperature, n in temperature_runs:
        parts = {name: f"{out_dir}/parts/{name}_{mode}" for name in engines}
        stats = rollout_checkpoints(cfg, eval_rows,
                                    {parts[name]: e for name, e in engines.items()}, n,
                                    salt=7, temperature=temperature,
                                    desc=f"eval {' '.join(engines)} {mode}")
        for name in engines:
            rows = consolidate(run_dir, parts[name], f"{out_dir}/{name}_{mode}_queries.parquet",
                               f"{out_dir}/{name}_{mode}_trajectories.parquet")
            trajs = [t for t in read_table(run_dir, f"{out_dir}/{name}_{mode}_trajectories.parquet")
                     if not t.get("infra_fault")]
            families = sorted({queries[t["query_id"]]["family"] for t in trajs})
            results[name][mode] = {
                "overall": summarise(trajs, queries),
                "pass_at_k": sum(r["pass_at_k"] for r in rows) / max(1, len(rows)),
                "by_family": {f: summarise([t for t in trajs
                                            if queries[t["query_id"]]["family"] == f], queries)
                              for f in families},
                "infra_faulted_episodes": stats[parts[name]]["infra_faulted_episodes"],
                "faults": stats[parts[name]]["faults"]}
    return results


def checkpoint_engine(cfg, name: str):
    """The rollout engine of the checkpoint `ckpt/<name>` (cfg.policy's engine)."""
    from stagent_ray.runio import run_path
    from stagent_ray.stages.rollouts import policy_engine

    return policy_engine(cfg, run_path(cfg.run_dir, f"ckpt/{name}"))


def run_eval(cfg) -> dict:
    from stagent_ray.runio import exists, read_table, write_json

    run_dir = cfg.run_dir
    eval_rows = read_table(run_dir, "data/eval.parquet")
    k = cfg.eval.pass_k
    summary = {}
    if cfg.eval.teacher:
        teacher = evaluate_models(cfg, {"teacher": cfg.teacher}, eval_rows,
                                  [("sampled", None, 1)])["teacher"]
        write_json(run_dir, "eval/teacher.json", teacher)
        summary["teacher"] = {"verified_rate": teacher["sampled"]["overall"]["verified_rate"],
                              "mean_reward": teacher["sampled"]["overall"]["mean_reward"]}
    engines = {name: checkpoint_engine(cfg, name) for name in cfg.eval.checkpoints
               if exists(run_dir, f"ckpt/{name}/config.json")}
    sampled = [("sampled", cfg.eval.temperature, k)] if k > 0 else []  # 0: greedy only
    results = evaluate_models(cfg, engines, eval_rows, [("greedy", 0.0, 1)] + sampled)
    for name, result in results.items():
        write_json(run_dir, f"eval/{name}.json", result)
        summary[name] = {"verified_rate": result["greedy"]["overall"]["verified_rate"],
                         "mean_reward": result["greedy"]["overall"]["mean_reward"]}
        if k > 0:
            summary[name][f"pass_at_{k}"] = result["sampled"]["pass_at_k"]
    write_json(run_dir, "eval/summary.json", summary)
    return summary
