"""The three rubric dimensions of the STAgent reward, as programmatic checks.

  planning      the right tools, no failed, repeated or surplus calls; no call at all for
                queries that need no tool or that the tools cannot serve
  fidelity      the facts the answer states are grounded in the tool outputs, and a
                tool-backed answer actually cites some tool fact
  presentation  a complete, well-formed answer: not empty, no leftover tool syntax, not a
                JSON dump, no repeated sentences, a sane length, the [Unsolved] marker
                exactly when the request is declined

Each dimension is in [0, 1]; `TASK_WEIGHTS` mixes them by task type, as the report does
(planning-heavy for plans and trips, fidelity-heavy for retrieval, presentation-heavy for
consultation such as policies and no-tool answers).
"""

from __future__ import annotations

import json
import re

from stagent_ray.models.chat_format import TOOL_CALL_OPEN, TOOL_RESPONSE_OPEN, UNSOLVED_MARKER
from stagent_ray.reward.facts import WORD_RE, AnswerFacts, Evidence

# task type -> (planning, fidelity, presentation)
TASK_WEIGHTS = {
    "planning": (0.5, 0.3, 0.2),
    "retrieval": (0.2, 0.6, 0.2),
    "consultation": (0.2, 0.3, 0.5),
}

FAILED_CALL_PENALTY = 0.25
REPEATED_CALL_PENALTY = 0.2
SURPLUS_CALL_PENALTY = 0.1
MAX_ANSWER_CHARS = 1500


def planning_score(calls: list[tuple[str, dict]], failed: int, gt: dict) -> float:
    """`calls` are the (tool, arguments) the assistant made, `failed` how many came back
    as errors (or could not be parsed). `gt["tools"]` lists the tools the task needs."""
    needed = set(gt.get("tools", []))
    if not needed:  # no tool needed, or a request the tools cannot serve: any call is wrong
        return 0.0 if calls else 1.0
    if not calls:
        return 0.0
    used = {name for name, _ in calls}
    coverage = len(needed & used) / len(needed)
    keys = [name + json.dumps(args, sort_keys=True) for name, args in calls]
    repeated = len(keys) - len(set(keys))
    surplus = max(0, len(calls) - gt.get("max_calls", len(needed) + 2))
    penalty = (FAILED_CALL_PENALTY * failed + REPEATED_CALL_PENALTY * repeated
               + SURPLUS_CALL_PENALTY * surplus)
    return max(0.0, coverage - penalty)


def fidelity_score(facts: AnswerFacts, ungrounded: int, evidence: Evidence, gt: dict,
                   answer: str) -> float:
    """Half: the share of stated facts that are grounded. Half: for tool tasks, the answer
    uses what the tools returned: a checkable fact, a place name from a result, or a
    phrase of four words quoted from a tool output (policy answers quote pages)."""
    total = (len(facts.times) + len(facts.dates) + len(facts.quantities) + len(facts.codes)
             + len(facts.names))
    grounded_share = 1.0 if total == 0 else (total - ungrounded) / total
    if not gt.get("tools"):
        return 0.5 * grounded_share + 0.5
    lower = answer.lower()
    words = WORD_RE.findall(lower)
    cites = (bool(facts.times or facts.quantities or facts.codes or facts.dates)
             or any(name.lower() in lower for name in evidence.entity_names)
             or any(" ".join(words[i:i + 4]) in evidence.tool_words for i in range(len(words) - 3)))
    return 0.5 * grounded_share + 0.5 * float(cites)


_SENTENCE_RE = re.compile(r"[^.!?\n]+[.!?]?")


def presentation_score(answer: str, gt: dict) -> float:
    """The mean of a few yes/no checks on the final answer."""
    text = answer.strip()
    declines = UNSOLVED_MARKER in text
    explanation = text.replace(UNSOLVED_MARKER, "").strip()
    sentences = [s.strip().lower() for s in _SENTENCE_RE.findall(text) if len(s.strip()) > 12]
    checks = [
        len(explanation) >= 15,                                        # says something
        len(text) <= MAX_ANSWER_CHARS,                                 # not a wall of text
        not any(tag in text for tag in (TOOL_CALL_OPEN, "</tool_call>", TOOL_RESPONSE_OPEN,
                                        "<|im_", '{"name"')),          # no leftover syntax
        not text.startswith(("{", "[")) or text.startswith(UNSOLVED_MARKER),  # not a JSON dump
        len(sentences) == len(set(sentences)),                         # no repeated sentences
        declines == (gt["kind"] == "unsolved"),                        # marker iff declined
    ]
    return sum(checks) / len(checks)


def rubric_value(planning: float, fidelity: float, presentation: float, task: str) -> float:
    wp, wf, wr = TASK_WEIGHTS[task]
    return wp * planning + wf * fidelity + wr * presentation
