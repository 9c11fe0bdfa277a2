"""score_trajectory: the reward of one finished conversation.

    value = 0                                  if there is no final answer
    value = 0                                  if the answer states an ungrounded fact (veto)
    value = 0.7 * verified + 0.3 * rubric      otherwise (the rubric's share is a parameter:
                                               score.rubric_weight, rl.rubric_weight)

`verified` (0/1) is the exact check of the answer against the query's ground truth
(`verify.py`); the rubric (`rubric.py`) mixes planning, fidelity and presentation by task
type. The 0.7/0.3 split keeps a correct answer far above any wrong one (a wrong but clean
answer tops out at 0.3) while still ranking correct trajectories by how cleanly they got
there — best-of-K and GRPO both need that spread. A verified trajectory with a clean plan
scores 1.0; one failed tool call costs 0.015 (retrieval) to 0.04 (planning tasks).

The hallucination veto: every place name, clock time, date, price, distance, duration,
temperature, percentage and flight/train number the answer states must appear in the user
query or in a tool output of this trajectory (`facts.Evidence`). Queries that need no tool
are exempt from the veto (their answer is knowledge or arithmetic, not a tool fact); the
verified check still has to pass.

Pure Python, no model, no network: it runs on every rollout of the pool.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from stagent_ray.models.chat_format import parse_assistant_turn
from stagent_ray.reward.facts import AnswerFacts, Evidence, answer_facts
from stagent_ray.reward.rubric import (fidelity_score, planning_score, presentation_score,
                                       rubric_value)
from stagent_ray.reward.verify import verify_answer
from stagent_ray.tasks.taxonomy import TAXONOMY

RUBRIC_WEIGHT = 0.3  # the default share; the verdict weighs the rest

# trailing words people add to a place name ("Yunhai Railway Station" vs "... Station")
_NAME_SUFFIXES = ("district", "area", "station", "city", "centre", "center")


@dataclass
class Score:
    value: float
    verified: bool
    parts: dict = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict:
        return {"value": self.value, "verified": self.verified, "parts": self.parts,
                "reason": self.reason}


def _field(query, name: str):
    return query[name] if isinstance(query, dict) else getattr(query, name)


def _name_grounded(name: str, evidence: Evidence, opens_sentence: bool) -> bool:
    """A name is grounded when the evidence holds it. Allowed around it: words the
    evidence also holds or a possessive before it ("Yunhai's Jade Lotus Hotpot"), a
    sentence-opening word ("Leaving Jade Hotel"), a generic suffix ("Old Gate District")."""
    words = name.replace("’", "'").split()
    words = [(w[:-2] if w.endswith("'s") else w).rstrip("'") for w in words]
    for start in range(len(words) - 1):
        prefix = words[:start]
        if not all(w.lower() in evidence.words or (i == 0 and opens_sentence) for i, w in enumerate(prefix)):
            break
        rest = words[start:]
        while len(rest) >= 2:
            if evidence.has_name(" ".join(rest)):
                return True
            if rest[-1].lower() in _NAME_SUFFIXES:
                rest = rest[:-1]
                continue
            break
    return False


def find_ungrounded(facts: AnswerFacts, evidence: Evidence) -> list[str]:
    """The answer's facts that no tool output (nor the user) stated."""
    bad = [f"place {n!r}" for n in facts.names
           if not _name_grounded(n, evidence, n in facts.openers)]
    bad += [f"time {t}" for t in facts.times if t not in evidence.times]
    bad += [f"date {d}" for d in facts.dates if d not in evidence.dates]
    bad += [f"code {c}" for c in facts.codes if c not in evidence.codes]
    bad += [f"{q.kind.split('_')[0]} {q.text!r}" for q in facts.quantities
            if not evidence.supports(q)]
    return bad


def score_trajectory(query, messages: list[dict], rubric_weight: float = RUBRIC_WEIGHT) -> Score:
    """Reward of `messages` (user, assistant/tool turns, final assistant) for `query`
    (a tasks.Query or its dict); the rubric weighs `rubric_weight`, the verdict the rest."""
    gt = _field(query, "ground_truth")
    intent = _field(query, "intent")
    task = TAXONOMY[intent["level1"]][intent["level2"]]
    user_text = next((m["content"] for m in messages if m["role"] == "user"),
                     _field(query, "text"))

    # A turn fails when it cannot be parsed or its tool answers with an error; an agent
    # loop may report a parse error as a tool message too, which must not count twice.
    calls: list[tuple[str, dict]] = []
    failed = 0
    tool_contents: list[str] = []
    turn_failed = False
    for msg in messages:
        if msg["role"] == "assistant":
            failed += turn_failed
            turn = parse_assistant_turn(msg["content"])
            turn_failed = turn.error is not None
            calls += [(c.name, c.arguments) for c in turn.calls]
        elif msg["role"] == "tool":
            tool_contents.append(msg["content"])
            try:
                result = json.loads(msg["content"])
            except json.JSONDecodeError:
                result = None
            turn_failed = turn_failed or (isinstance(result, dict) and "error" in result)
    failed += turn_failed

    last = messages[-1] if messages else {"role": "", "content": ""}
    final = parse_assistant_turn(last["content"]) if last["role"] == "assistant" else None
    if final is None or not final.is_final:
        return Score(0.0, False, {"calls": len(calls), "failed": failed}, "no final answer")
    answer = final.answer

    evidence = Evidence(user_text, tool_contents)
    facts = answer_facts(answer)
    ungrounded = [] if gt["kind"] == "no_tool" else find_ungrounded(facts, evidence)
    verified, why = verify_answer(gt, answer, evidence, user_text)
    planning = planning_score(calls, failed, gt)
    fidelity = fidelity_score(facts, len(ungrounded), evidence, gt, answer)
    presentation = presentation_score(answer, gt)
    rubric = rubric_value(planning, fidelity, presentation, task)
    parts = {"verified": float(verified), "planning": round(planning, 4),
             "fidelity": round(fidelity, 4), "presentation": round(presentation, 4),
             "rubric": round(rubric, 4), "calls": len(calls), "failed": failed,
             "veto": bool(ungrounded)}
    if ungrounded:
        return Score(0.0, False, parts, "hallucination: " + "; ".join(ungrounded[:3]))
    return Score(round(weighted_value(verified, rubric, rubric_weight), 6), verified, parts, why)


def weighted_value(verified: bool, rubric: float, rubric_weight: float) -> float:
    """The value of an answer that passed the veto: the verdict and the rubric, weighed."""
    return (1.0 - rubric_weight) * float(verified) + rubric_weight * rubric
