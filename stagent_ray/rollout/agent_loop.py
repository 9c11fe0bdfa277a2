"""The multi-turn agent loop: generate, parse, call tools, append, repeat.

With a token engine every episode runs on its own: it sends a turn to the engine's stream,
runs that turn's tool calls, and sends the next, while the engine batches whatever turns are
waiting (HFEngine adds each to its running batch as a row frees up). No episode waits for
the slowest turn of the others. Each episode has a seed, and each of its turns a seed derived
from it, so an episode samples the same whatever it is batched with. Token engines
are token-in/token-out: the ids the engine sampled (and their log-probs) go into the
trajectory as they are, tool responses are appended as ids, nothing is re-tokenised. The
trajectory's `token_ids`, `logprobs` and `loss_mask` are what the trainers consume.

Faults: each trajectory counts the faults it met (`faults`: injected ones by kind, tool
infrastructure errors, retries, calls that stayed failed). A tool call that stays failed
after the executor's retries is the infrastructure's doing, not the model's: the episode is
marked (`infra_fault`) so that callers roll it out again or leave it out of every score.
Each trajectory's `fault_key` seeds the fault draws of its calls, so they do not depend on
which episodes share a batch.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from stagent_ray.config import AgentConfig
from stagent_ray.models.chat_format import (DEFAULT_SYSTEM_PROMPT, ParsedTurn,
                                            format_tool_response, parse_assistant_turn,
                                            prompt_tools)
from stagent_ray.models.formats import format_for
from stagent_ray.rollout.engine import SamplingParams, TokenEngine, derive_seed, prompt_seeds


@dataclass
class Trajectory:
    query_id: str
    messages: list[dict]                 # system, user, then assistant/tool turns
    prompt_len: int = 0                  # ids before the first assistant token
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)   # 0.0 where not sampled
    loss_mask: list[int] = field(default_factory=list)    # 1 on sampled assistant tokens
    num_turns: int = 0
    num_tool_calls: int = 0
    num_tool_errors: int = 0             # failed tool calls and unparseable turns
    stop_reason: str = ""                # answer | max_turns | max_tokens
    wall_time_s: float = 0.0
    fault_key: str = ""                  # names the episode in fault draws
    faults: Counter = field(default_factory=Counter)  # see the module docstring

    @property
    def infra_fault(self) -> bool:
        """A tool call failed for infrastructure reasons even after its retries."""
        return self.faults["unrecovered"] > 0

    @property
    def answer(self) -> str:
        last = self.messages[-1]
        return last["content"] if last["role"] == "assistant" and self.stop_reason == "answer" else ""

    def to_dict(self) -> dict:
        return asdict(self)


def sum_faults(fault_counts) -> dict:
    """Totals of many episodes' (or stages') fault counts: Counters, dicts or their JSON."""
    total = Counter()
    for f in fault_counts:
        total.update(json.loads(f) if isinstance(f, str) else f)
    return dict(sorted(total.items()))


def initial_messages(query_text: str, system_prompt: str | None = None) -> list[dict]:
    return [{"role": "system", "content": system_prompt or DEFAULT_SYSTEM_PROMPT},
            {"role": "user", "content": query_text}]


def shown_tool_schemas(world_cfg, tool_prompt: str) -> list[dict]:
    """The tool list as the system prompt shows it (`agent.tool_prompt`), read from the
    configured backend (an MCP backend is a server process and a loop thread: closed)."""
    from stagent_ray.world.backends import executor_from_config

    executor = executor_from_config(world_cfg)
    try:
        return prompt_tools(executor.schemas(), tool_prompt)
    finally:
        if hasattr(executor.backend, "close"):
            executor.backend.close()


def check_prompt_budget(prompt_tokens: int, max_tokens: int, what: str) -> None:
    """A prompt that fills the trajectory's budget leaves the model no turn: fail, naming
    both numbers, instead of ending every episode at once with zero turns."""
    if prompt_tokens >= max_tokens:
        raise ValueError(
            f"the prompt (system + tools + query) of {what} is {prompt_tokens} tokens, and "
            f"agent.max_tokens is {max_tokens}: raise agent.max_tokens, or shorten the tool "
            "prompt (agent.tool_prompt=compact or none)")


def _is_error(result) -> bool:
    return isinstance(result, dict) and "error" in result


async def _run_calls(executor, calls, t: Trajectory) -> list:
    key = f"{t.fault_key}/{t.num_turns}"
    if len(calls) == 1:
        return [await executor.acall(calls[0].name, calls[0].arguments, key, t.faults)]
    return await executor.acall_many([(c.name, c.arguments) for c in calls], key, t.faults)


async def observe_turns(executor, pending: list[tuple[Trajectory, ParsedTurn]]) -> list[list[str]]:
    """Run every tool call of this turn concurrently; append the tool messages.

    An unparseable turn gets its structured error back as the observation, so the model
    sees what it did wrong and the episode goes on.
    """
    results = await asyncio.gather(*[
        _run_calls(executor, p.calls, t) if p.error is None else asyncio.sleep(0, [p.error])
        for t, p in pending])
    out = []
    for (t, parsed), observations in zip(pending, results):
        if parsed.error is None:
            t.num_tool_calls += len(parsed.calls)
        t.num_tool_errors += sum(_is_error(o) for o in observations)
        contents = [format_tool_response(o) for o in observations]
        t.messages += [{"role": "tool", "content": c} for c in contents]
        out.append(contents)
    return out


def run_episodes(engine: TokenEngine, executor, queries: list[tuple[str, str]],
                 sampling: SamplingParams, agent: AgentConfig, fault_key: str = "",
                 seeds: list[int] | None = None) -> list[Trajectory]:
    """Roll out one episode per `(query_id, query_text)` with a token engine. `seeds`: one
    per episode (None: derived from `sampling.seed`)."""
    return asyncio.run(run_episodes_async(engine, executor, queries, sampling, agent, fault_key,
                                          seeds))


async def run_episodes_async(engine, executor, queries, sampling: SamplingParams,
                             agent: AgentConfig, fault_key: str = "",
                             seeds: list[int] | None = None) -> list[Trajectory]:
    tok = engine.tokenizer
    fmt = format_for(tok, agent)
    schemas = executor.schemas()
    shown = prompt_tools(schemas, agent.tool_prompt)
    # With one call per turn the turn may end at </tool_call> (when it is one token); the
    # loop then closes the turn with the end-of-turn token.
    stops = fmt.stop_ids + ([fmt.call_close_id] if agent.max_calls_per_turn == 1
                            and fmt.call_close_id is not None else [])
    sampling = SamplingParams(**{**asdict(sampling), "stop_token_ids": stops})
    seeds = seeds if seeds is not None else prompt_seeds(sampling, len(queries))
    start = time.perf_counter()

    trajs = []
    for query_id, text in queries:
        messages = initial_messages(text, agent.system_prompt)
        ids, _ = fmt.render_ids(messages, shown, add_generation_prompt=True)
        check_prompt_budget(len(ids), agent.max_tokens, query_id)
        trajs.append(Trajectory(query_id, messages, len(ids), ids, [0.0] * len(ids),
                                [0] * len(ids), fault_key=f"{fault_key}/{len(trajs)}:{query_id}"))

    def finish(t: Trajectory, reason: str) -> None:
        t.stop_reason = reason
        t.wall_time_s = time.perf_counter() - start

    async def episode(i: int, stream) -> None:
        t, seed = trajs[i], seeds[i]
        try:
            while len(t.token_ids) < agent.max_tokens:
                gen = await stream.generate(t.token_ids, derive_seed(seed, t.num_turns), i)
                if gen.injected:
                    t.faults["injected_garbage"] += 1
                budget = agent.max_tokens - len(t.token_ids)
                if len(gen.token_ids) > budget:  # past the trajectory's token budget: cut
                    gen.token_ids, gen.logprobs = gen.token_ids[:budget], gen.logprobs[:budget]
                    gen.finish_reason = "length"
                t.token_ids += gen.token_ids
                t.logprobs += gen.logprobs
                t.loss_mask += [1] * len(gen.token_ids)
                t.num_turns += 1
                text = tok.decode([x for x in gen.token_ids if x not in fmt.stop_ids],
                                  skip_special_tokens=False)
                message = {"role": "assistant", "content": text}
                t.messages.append(message)
                if gen.finish_reason == "length":
                    if len(t.token_ids) >= agent.max_tokens:
                        break
                    parsed = ParsedTurn(error={"error": {
                        "type": "turn_too_long",
                        "message": "the turn hit max_new_tokens before ending"}})
                else:
                    parsed = fmt.parse(text, schemas, agent.max_calls_per_turn)
                    message["content"] = fmt.canonical(text, parsed)
                    if parsed.is_final:
                        return finish(t, "answer")
                if t.num_turns >= agent.max_turns:
                    return finish(t, "max_turns")
                contents, = await observe_turns(executor, [(t, parsed)])
                # Close the assistant turn if generation stopped at </tool_call>, then the tool
                # turn and the next assistant header: all context, none of it trained on.
                extra = (([] if t.token_ids[-1] in fmt.stop_ids else [fmt.turn_end_id])
                         + fmt.tool_response_ids(t.messages, shown, contents))
                t.token_ids += extra
                t.logprobs += [0.0] * len(extra)
                t.loss_mask += [0] * len(extra)
            finish(t, "max_tokens")
        finally:  # the stream stops waiting for this episode's turns
            stream.finish(i)

    async with engine.stream(sampling, agent.max_tokens - 1, len(trajs),
                             agent.reproducible) as stream:
        await asyncio.gather(*[episode(i, stream) for i in range(len(trajs))])
    return trajs


def run_message_episodes(engine, executor, queries: list, agent: AgentConfig,
                         seeds: list[int], tokenizer=None, fault_key: str = "") -> list[Trajectory]:
    """Roll out episodes with a message engine (oracle, openai); `queries` are task records
    with `query_id` and `text`. With a tokenizer, ids and the loss mask are rendered."""
    return asyncio.run(_run_message_episodes(engine, executor, queries, agent, seeds, tokenizer,
                                             fault_key))


async def _run_message_episodes(engine, executor, queries, agent, seeds, tokenizer, fault_key):
    schemas = executor.schemas()
    start = time.perf_counter()
    trajs = [Trajectory(q.query_id, initial_messages(q.text, agent.system_prompt),
                        fault_key=f"{fault_key}/{i}:{q.query_id}") for i, q in enumerate(queries)]
    running = list(range(len(trajs)))
    while running:
        contents = await asyncio.to_thread(
            engine.chat, [queries[i] for i in running], [trajs[i].messages for i in running],
            [seeds[i] for i in running])
        for i, hit in zip(running, getattr(engine, "last_garbage", [])):
            if hit:
                trajs[i].faults["injected_garbage"] += 1
        pending = []
        for i, text in zip(running, contents):
            t = trajs[i]
            t.messages.append({"role": "assistant", "content": text})
            t.num_turns += 1
            parsed = parse_assistant_turn(text, schemas, agent.max_calls_per_turn)
            if parsed.is_final or t.num_turns >= agent.max_turns:
                t.stop_reason = "answer" if parsed.is_final else "max_turns"
                t.wall_time_s = time.perf_counter() - start
            else:
                pending.append((t, parsed))
        await observe_turns(executor, pending)
        running = [i for i in running if not trajs[i].stop_reason]
    if tokenizer is not None:
        fmt = format_for(tokenizer, agent)
        for t in trajs:
            t.token_ids, t.loss_mask = fmt.render_ids(t.messages,
                                                      prompt_tools(schemas, agent.tool_prompt))
            t.logprobs = [0.0] * len(t.token_ids)
            t.prompt_len = t.loss_mask.index(1) if 1 in t.loss_mask else len(t.loss_mask)
    return trajs
