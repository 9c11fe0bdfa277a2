"""The oracle: the world's scripted expert, the default teacher.

Each family has a solver `solve_<family>(query, rng, noise)` (in oracle_places,
oracle_routes, oracle_info): a generator that yields `(thought, tool_name, arguments)`,
gets each tool result back through `.send()`, and returns the final answer text. Solvers
read `query.params` and the tool results, never `query.ground_truth`.

`run_oracle` drives a solver against an executor and returns the conversation.
`oracle_next_turn` is the stateless form the rollout engines use: it replays the solver
over the tool results already in `messages` and returns the next assistant message. With
the same seed it reproduces `run_oracle` turn for turn, because a solver's only inputs
are the query, its rng (seeded from query id and seed) and the tool results.
"""

from __future__ import annotations

import json
import random

from stagent_ray.models.chat_format import format_tool_call, format_tool_response
from stagent_ray.tasks.families import FAMILIES, generate_queries
from stagent_ray.tasks.oracle_info import SOLVERS as INFO_SOLVERS
from stagent_ray.tasks.oracle_places import SOLVERS as PLACE_SOLVERS
from stagent_ray.tasks.oracle_routes import SOLVERS as ROUTE_SOLVERS
from stagent_ray.tasks.query import Query

SOLVERS = {**PLACE_SOLVERS, **ROUTE_SOLVERS, **INFO_SOLVERS}
MAX_TOOL_CALLS = 20  # a solver never needs more; guards against a looping generator
DEFAULT_NOISE = 0.3


def _as_query(query) -> Query:
    return query if isinstance(query, Query) else Query.from_dict(query)


def _start(query: Query, noise: float, seed: int):
    rng = random.Random(f"oracle:{query.query_id}:{seed}")
    return SOLVERS[query.family](query, rng, noise)


def _assistant_content(step) -> str:
    thought, tool, arguments = step
    call = format_tool_call(tool, arguments)
    return f"{thought}\n{call}" if thought else call


def _as_result(content: str):
    """A tool message back into the dict the solver expects (what it would have got)."""
    try:
        return json.loads(content)
    except json.JSONDecodeError:
        return {"error": {"type": "invalid_response", "message": content[:200]}}


def run_oracle(query, executor, noise: float = 0.0, seed: int = 0) -> list[dict]:
    """Solve one query through `executor`; returns [user, assistant, tool, ..., assistant]."""
    query = _as_query(query)
    messages = [{"role": "user", "content": query.text}]
    solver = _start(query, noise, seed)
    result = None
    for _ in range(MAX_TOOL_CALLS + 1):
        try:
            step = solver.send(result)
        except StopIteration as done:
            messages.append({"role": "assistant", "content": done.value})
            return messages
        messages.append({"role": "assistant", "content": _assistant_content(step)})
        content = format_tool_response(executor.call(step[1], step[2]))
        messages.append({"role": "tool", "content": content})
        result = _as_result(content)  # the same round trip oracle_next_turn sees
    raise RuntimeError(f"oracle for {query.family} made more than {MAX_TOOL_CALLS} calls")


def oracle_next_turn(query, messages: list[dict], noise: float = 0.0, seed: int = 0) -> str:
    """The oracle's next assistant message after `messages` (a tool call or the answer).

    Replays the solver over the tool results present in `messages`, in order. Raises
    ValueError when the messages hold more tool results than the solver made calls
    (the conversation did not come from this oracle).
    """
    query = _as_query(query)
    results = [_as_result(m["content"]) for m in messages if m["role"] == "tool"]
    solver = _start(query, noise, seed)
    try:
        step = solver.send(None)
    except StopIteration as done:
        if results:
            raise ValueError("the conversation has tool results but the oracle makes no call")
        return done.value
    for i, result in enumerate(results):
        try:
            step = solver.send(result)
        except StopIteration as done:
            if i != len(results) - 1:
                raise ValueError("the conversation has more tool results than the oracle made calls")
            return done.value
    return _assistant_content(step)


def oracle_trajectories(per_family: int, noise: float, score_trajectory, seed: int = 0,
                        world_seed: int = 0, families=None):
    """Yield (query, messages, score) for `per_family` queries of each family, graded by
    `score_trajectory(query, messages)` (the caller's scorer: tasks never import reward)."""
    from stagent_ray.world.backends import make_executor
    from stagent_ray.world.generate import load_world

    world = load_world(world_seed)
    executor = make_executor("world", seed=world_seed)
    for family in families or FAMILIES:
        for query in generate_queries(world, family, per_family, seed):
            messages = run_oracle(query, executor, noise, seed)
            yield query, messages, score_trajectory(query, messages)


def oracle_verified_rates(per_family: int, noise: float, score_trajectory, seed: int = 0,
                          world_seed: int = 0) -> dict:
    """Share of verified oracle trajectories per family (a check on families, oracle and
    scorer together: at noise 0 every family should be near 1.0)."""
    verified: dict[str, list[bool]] = {}
    for query, _, score in oracle_trajectories(per_family, noise, score_trajectory, seed,
                                               world_seed):
        verified.setdefault(query.family, []).append(score.verified)
    return {family: round(sum(v) / len(v), 4) for family, v in verified.items()}
