"""Stage `report`: report/index.html with PNG plots, and report/summary.md.

Plots: the pass-count histogram of the Full QA pool (0..N of N), the split counts, the eval
scores per stage and family, the SFT loss curves and the RL reward curve; a table of the
faults each stage met (injected or real) and how they were handled. Everything is drawn
from the run directory's artifacts, so the report can be rebuilt at any time.
"""

from __future__ import annotations

import html
import io
import json
import posixpath

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from stagent_ray.runio import (exists, filesystem, read_json, read_jsonl, read_table,  # noqa: E402
                               run_path)


def _save(fig, run_dir: str, name: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    fs, path = filesystem(run_path(run_dir, f"report/{name}"))
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(buf.getvalue())
    return name


def _metrics(run_dir: str, relative: str) -> list[dict]:
    return read_jsonl(run_dir, relative) if exists(run_dir, relative) else []


FAULT_COLUMNS = [("injected_timeout", "injected timeouts"), ("injected_error", "raised"),
                 ("injected_malformed", "malformed"), ("injected_garbage", "garbage outputs"),
                 ("infra_errors", "tool infra errors"), ("retried", "retried"),
                 ("unrecovered", "failed after retries"), ("rerolled", "episodes re-rolled"),
                 ("infra_faulted_episodes", "episodes left out")]


def stage_faults(run_dir: str, evals: dict, rl_history: list[dict]) -> dict[str, dict]:
    """Fault counts per stage, from the part files, eval results and RL metrics."""
    from stagent_ray.rollout.agent_loop import sum_faults
    from stagent_ray.stages.rollouts import fault_totals, list_parts
    from stagent_ray.train.rl import history_faults

    out = {}
    for stage, parts in (("tiny_qa", "data/parts/tiny_qa"), ("score", "data/parts/score"),
                         ("split (recovery)", "data/parts/recover")):
        if list_parts(run_dir, parts, "query-"):
            totals = fault_totals(run_dir, parts)
            out[stage] = {**totals["faults"],
                          "infra_faulted_episodes": totals["infra_faulted_episodes"]}
    if rl_history:
        out["rl"] = history_faults(rl_history)
    if evals:
        out["eval"] = sum_faults({**e[mode].get("faults", {}), "infra_faulted_episodes":
                                  e[mode].get("infra_faulted_episodes", 0)}
                                 for e in evals.values() for mode in ("greedy", "sampled")
                                 if mode in e)
    return out


def fault_table(faults: dict[str, dict]) -> str:
    table = "| stage | " + " | ".join(title for _, title in FAULT_COLUMNS) + " |\n"
    table += "|---" * (len(FAULT_COLUMNS) + 1) + "|\n"
    for stage, counts in faults.items():
        table += f"| {stage} | " + " | ".join(str(counts.get(k, 0)) for k, _ in FAULT_COLUMNS) + " |\n"
    return table


def run_report(cfg) -> dict:
    from stagent_ray.stages.rollouts import pass_count_histogram

    run_dir = cfg.run_dir
    images, sections = [], []

    if exists(run_dir, "data/full_qa.parquet"):
        full = read_table(run_dir, "data/full_qa.parquet")
        hist = pass_count_histogram(full)
        n = len(hist) - 1
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.bar(range(n + 1), hist, color="#3b7dd8")
        ax.set(xlabel=f"verified rollouts out of {n}", ylabel="queries",
               title="Full QA pool: pass counts under πθ0")
        images.append(("Pass-count histogram", _save(fig, run_dir, "pass_histogram.png")))
        sections.append(("Full QA pool", f"{len(full)} queries; histogram {hist}"))

    if exists(run_dir, "data/split_report.json"):
        split = read_json(run_dir, "data/split_report.json")
        fig, ax = plt.subplots(figsize=(6, 3.2))
        names = list(split["regions"]) + ["recovered", "SFT-1 rows", "RL prompts"]
        values = list(split["regions"].values()) + [split["noise_recovered_by_teacher"],
                                                    split["sft1_rows"], split["rl_prompts"]]
        ax.bar(names, values, color="#5aa469")
        ax.set(ylabel="queries", title="Certainty split")
        ax.tick_params(axis="x", rotation=30)
        images.append(("Split counts", _save(fig, run_dir, "split_counts.png")))
        sections.append(("Split", json.dumps({k: v for k, v in split.items()
                                              if k not in ("by_family",)}, indent=1)))

    evals = {}
    for name in ["teacher", "base", "sft0", "sft1", "rl"]:
        if exists(run_dir, f"eval/{name}.json"):
            evals[name] = read_json(run_dir, f"eval/{name}.json")
    if evals:
        mode_of = {name: "greedy" if "greedy" in e else "sampled" for name, e in evals.items()}
        families = sorted({f for name, e in evals.items() for f in e[mode_of[name]]["by_family"]})
        fig, ax = plt.subplots(figsize=(max(6, len(families) * 0.9), 3.6))
        width = 0.8 / len(evals)
        for i, (name, e) in enumerate(evals.items()):
            by_family = e[mode_of[name]]["by_family"]
            ax.bar([j + i * width for j in range(len(families))],
                   [by_family.get(f, {}).get("verified_rate", 0) for f in families], width,
                   label=name)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(families))], families,
                      rotation=40, ha="right")
        ax.set(ylabel="verified rate", title="Held-out eval by family", ylim=(0, 1.05))
        ax.legend(fontsize=8)
        images.append(("Eval by family", _save(fig, run_dir, "eval_by_family.png")))
        rows = [(name, e[mode_of[name]]["overall"]) for name, e in evals.items()]
        table = "| model | verified | reward | rubric | [Unsolved] acc | calls/ep | errors/ep |\n" \
                "|---|---|---|---|---|---|---|\n"
        fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
        for name, o in rows:
            table += (f"| {name} | {fmt(o['verified_rate'])} | {fmt(o['mean_reward'])} | "
                      f"{fmt(o['rubric'])} | {fmt(o['unsolved_accuracy'])} | "
                      f"{fmt(o['tool_calls_per_episode'])} | {fmt(o['tool_errors_per_episode'])} |\n")
        sections.append(("Held-out evaluation", table))

    curves = {s: _metrics(run_dir, f"train/{s}_metrics.jsonl") for s in ("sft0", "sft1")}
    if any(curves.values()):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for stage, recs in curves.items():
            recs = [r for r in recs if "loss" in r]
            ax.plot([r["step"] for r in recs], [r["loss"] for r in recs], label=stage)
        ax.set(xlabel="step", ylabel="loss", title="SFT loss")
        ax.legend()
        images.append(("SFT loss", _save(fig, run_dir, "sft_loss.png")))
    rl = [r for r in _metrics(run_dir, "train/rl_metrics.jsonl") if "reward_mean" in r]
    faults = stage_faults(run_dir, evals, rl)
    sections.append(("Faults", fault_table(faults) + "\nTool faults are the infrastructure's: "
                     "retried, then the episode re-rolled, then left out of every score. Garbage "
                     "outputs are the model's own failure and are scored."))
    if rl:
        # the verdict beside the shaped reward: a rising reward with a flat verified rate is
        # the rubric being learnt, not the task
        fig, ax = plt.subplots(figsize=(6, 3.2))
        steps = [r["step"] for r in rl]
        ax.plot(steps, [r["reward_mean"] for r in rl], color="#d8793b", label="shaped reward")
        ax.plot(steps, [r["verified_rate"] for r in rl], color="#4c72b0", label="verified rate")
        if all("kept_mixed_verdict_share" in r for r in rl):
            ax.plot(steps, [r["kept_mixed_verdict_share"] for r in rl], color="#999",
                    linestyle=":", label="kept groups with mixed verdicts")
        ax.set(xlabel="step", ylabel="rate of the step's rollouts", title="RL rollouts",
               ylim=(0, 1.05))
        ax.legend(fontsize=7)
        images.append(("RL reward and verified rate", _save(fig, run_dir, "rl_reward.png")))

    md = "# stagent-ray run report\n\n" + "".join(
        f"## {title}\n\n{body}\n\n" for title, body in sections) + "".join(
        f"![{title}]({name})\n\n" for title, name in images)
    body = "".join(f"<h2>{html.escape(t)}</h2><pre>{html.escape(b)}</pre>" for t, b in sections)
    body += "".join(f"<h2>{html.escape(t)}</h2><img src='{n}'>" for t, n in images)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>stagent-ray report</title>"
            f"</head><body style='font-family:sans-serif;max-width:980px;margin:auto'>"
            f"<h1>stagent-ray run report</h1><p>run_dir: {html.escape(run_dir)}</p>{body}"
            f"</body></html>")
    for name, text in (("summary.md", md), ("index.html", page)):
        fs, path = filesystem(run_path(run_dir, f"report/{name}"))
        fs.create_dir(posixpath.dirname(path), recursive=True)  # no plots: no report/ yet
        with fs.open_output_stream(path) as f:
            f.write(text.encode())
    return {"plots": [n for _, n in images], "path": run_path(run_dir, "report/index.html"),
            "faults": faults}
