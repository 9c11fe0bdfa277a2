"""HFEngine: token-in/token-out generation on any Hugging Face causal LM, with its own decode loop.

Why not `model.generate`: it runs a static batch until its longest row ends (rollouts of very
different lengths leave most of the batch idle), it pays logits-processor and stopping-criteria
overhead and a host sync every step, and it does not return log-probs by our convention.

The layout: one KV cache of `slots` rows × `capacity` columns, and one shared write column `col`.

    column:   0 ............................. col ......... capacity
    row 0:    [pad pad | prompt a    | gen a ]  ^ every row writes its newest token here
    row 1:    [stale ......| prompt e | gen e]     (refilled: new prompt right-aligned at col)

- A decode step feeds each row's newest token and writes its keys/values at column `col` for all
  rows at once: one batched forward with static shapes (what CUDA graphs need).
- Each row has its own RoPE position ids (a refilled row restarts at 0) and its own additive mask
  over the columns, which hides left padding and what a finished row left behind.
- A finished row is refilled at once with the next waiting prompt: the prompt is prefilled apart
  from the batch (with any other prompts refilled at the same step) and written at columns
  [col - len, col) of that row, so it lines up with the others.
- When `col` reaches `capacity`, every row shifts left by the columns no live row uses. RoPE is
  applied before keys are cached, so moving cached keys to other columns changes nothing.

- Requests come from a list (`generate`) or from episodes as they send turns (`stream`, run on
  the engine's decode thread): both feed the same loop, `_decode_loop`.

Log-probs follow `engine.py`: log_softmax(logits / temperature) at the sampled token, before
top-k/top-p truncation; temperature 0 is greedy, scored at temperature 1. Each row draws from
its own seed (`row_uniforms`), so a prompt samples the same in any batch.
"""

from __future__ import annotations

import asyncio
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

from stagent_ray.models.build import DTYPES  # imports transformers anyway
from stagent_ray.rollout.engine import Generation, SamplingParams, TokenEngine, prompt_seeds


WINDOW_ALIGN = 16  # columns: the eager decode window starts and ends on multiples of this


class SlotKVCache:
    """Preallocated keys/values, one [slots, kv_heads, capacity, head_dim] tensor per layer.

    Given explicit position ids and a 4D mask, HF models (Qwen3, Qwen2, Llama checked) call only
    `update(key_states, value_states, layer_idx)` on their cache, so this duck-types a
    `transformers` Cache without depending on its internals (which change between releases).
    Two modes:
    - prefill (`prefill_rows` set): the new prompts of some rows, written at columns
      [prefill_end - len, prefill_end) of those rows; they attend only to themselves.
    - decode: rows [0, rows) write one token each at column `write_col`; attention reads
      columns `window` of those rows.
    """

    def __init__(self, slots: int, capacity: int, dtype: torch.dtype, device):
        self.slots, self.capacity = slots, capacity
        self.keys: dict[int, torch.Tensor] = {}    # allocated at the first prefill: the model's own
        self.values: dict[int, torch.Tensor] = {}  # key states tell us kv heads and head dim
        self.write_col = torch.zeros(1, dtype=torch.long, device=device)
        # additive mask over the columns: 0 where a row may attend, dtype-min elsewhere (a finite
        # minimum, not -inf, so a fully masked padding query never turns into NaN)
        self.mask = torch.full((slots, 1, 1, capacity), torch.finfo(dtype).min, dtype=dtype,
                               device=device)
        self.prefill_rows: torch.Tensor | None = None
        self.prefill_end = 0
        self.window = (0, capacity)
        self.rows = slots
        if torch.device(device).type == "cuda":
            # CUDA graphs replay fixed addresses: tensors mutated outside the graph must stay put
            torch._dynamo.mark_static_address(self.write_col)
            torch._dynamo.mark_static_address(self.mask)

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx not in self.keys:
            for store, states in ((self.keys, key_states), (self.values, value_states)):
                shape = (self.slots, states.shape[1], self.capacity, states.shape[3])
                store[layer_idx] = torch.zeros(shape, dtype=states.dtype, device=states.device)
                if states.is_cuda:
                    torch._dynamo.mark_static_address(store[layer_idx])
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if self.prefill_rows is not None:
            start = self.prefill_end - key_states.shape[2]
            keys[self.prefill_rows, :, start:self.prefill_end] = key_states
            values[self.prefill_rows, :, start:self.prefill_end] = value_states
            return key_states, value_states
        n, (lo, hi) = self.rows, self.window
        keys[:n].index_copy_(2, self.write_col, key_states)
        values[:n].index_copy_(2, self.write_col, value_states)
        return keys[:n, :, lo:hi], values[:n, :, lo:hi]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        # Not called by transformers 5.20 when position ids and a 4D mask are given. Older 5.x
        # releases (the GPU machine has 5.17) may derive an unused `cache_position` from it.
        return 0

    def shift_left(self, shift: int, end: int) -> None:
        """Move columns [shift, end) to [0, end - shift) in every row; clear the mask after."""
        for t in (*self.keys.values(), *self.values.values()):  # [slots, heads, capacity, dim]
            t[:, :, :end - shift] = t[:, :, shift:end].clone()  # clone: the ranges overlap
        self.mask[..., :end - shift] = self.mask[..., shift:end].clone()
        self.mask[..., end - shift:] = torch.finfo(self.mask.dtype).min


DECODE_ATTENTION = "stagent_decode"


def decode_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     **kwargs):
    """A transformers attention function: SDPA, except for one-token queries (decode steps),
    whose query heads are grouped onto their shared k/v head instead of k/v being repeated.
    transformers' SDPA path repeats k/v to all query heads whenever a mask is given (CUDA's
    kernels take no mask with GQA), which copies the whole cache window every step; decode
    reads that window anyway, so two grouped matmuls are the cheaper way.
    query [B, Hq, 1, D], key/value [B, Hkv, T, D], attention_mask additive [B, 1, 1, T] or None
    -> ([B, 1, Hq, D], None)."""
    if query.shape[2] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    b, hq, _, d = query.shape
    hkv = key.shape[1]
    scale = d ** -0.5 if scaling is None else scaling
    q = query.reshape(b, hkv, hq // hkv, d)                       # [B, Hkv, G, D]: head = kv*G + g
    scores = torch.matmul(q, key.transpose(2, 3)) * scale         # [B, Hkv, G, T]
    if attention_mask is not None:
        scores = scores + attention_mask[..., :key.shape[2]]
    probs = scores.float().softmax(-1).to(value.dtype)           # fp32 softmax, as HF's eager
    out = torch.matmul(probs, value)                              # [B, Hkv, G, D]
    return out.reshape(b, 1, hq, d), None                         # [B, 1, Hq, D]


def register_decode_attention() -> None:
    """Make `attn_implementation="stagent_decode"` known to transformers, with SDPA's masks."""
    AttentionInterface.register(DECODE_ATTENTION, decode_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(DECODE_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) of int64 values in [0, 2^32). The
    multipliers are below 2^31, so no product leaves int64."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x68E31DA5) & MASK32
    return x ^ (x >> 16)


def row_uniforms(seeds: torch.Tensor, counters: torch.Tensor) -> torch.Tensor:
    """One number in (0, 1) per row, fixed by (row seed, row counter): int64 [rows] each ->
    float32 [rows]. Counter-based, so a row's draws do not depend on the other rows (a shared
    torch.Generator would make them depend on the batch a prompt lands in)."""
    h = _mix32(seeds & MASK32)
    h = _mix32(h ^ (seeds >> 32))
    h = _mix32(h ^ (counters & MASK32))
    # 2^-25 margins keep it off 0 and 1 after rounding to float32
    return ((h.double() + 0.5) / 2.0 ** 32).float().clamp_(2 ** -25, 1 - 2 ** -24)


def sample_tokens(logits: torch.Tensor, sampling: SamplingParams, uniforms: torch.Tensor):
    """logits [rows, vocab], uniforms [rows] -> (token ids [rows], their log-probs [rows]),
    engine convention. Sampling is by inverse CDF: the token whose cumulative probability
    bracket holds the row's uniform (a token with probability 0 has an empty bracket)."""
    logits = logits.float()
    if sampling.temperature <= 0:
        tokens = logits.argmax(-1)
        return tokens, torch.log_softmax(logits, -1).gather(-1, tokens[:, None])[:, 0]
    logits = logits / sampling.temperature
    logprobs = torch.log_softmax(logits, -1)  # scored before any truncation
    if 0 < sampling.top_k < logits.shape[-1]:
        kth = torch.topk(logits, sampling.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token once the tokens ranked above it hold top_p (the top token always stays)
        drop = probs.cumsum(-1) - probs >= sampling.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    cdf = logits.softmax(-1).cumsum(-1)                                  # [rows, vocab]
    target = uniforms[:, None].to(cdf.device) * cdf[:, -1:]               # [rows, 1]
    tokens = torch.searchsorted(cdf, target, right=True)[:, 0].clamp_(max=cdf.shape[-1] - 1)
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


class HFEngine(TokenEngine):
    """Continuous-batching generation on a Hugging Face causal LM (CPU or one GPU).

    `model_path_or_model`: a checkpoint directory / hub id (loaded with `dtype`, tokenizer loaded
    from the same place) or a model object (used in its own dtype, moved to `device`).
    `compile` (default: on for CUDA): the decode step runs under torch.compile with CUDA graphs
    ("reduce-overhead") and every call uses all `max_batch_size` slots, so shapes never change.
    One `generate` at a time: the KV cache is shared state (Serve replicas call it serially).
    """

    def __init__(self, model_path_or_model, tokenizer=None, device: str = "auto",
                 dtype: str = "float32", max_batch_size: int = 16, compile: bool | None = None):
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if isinstance(model_path_or_model, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM

            from stagent_ray.models.build import load_tokenizer
            path = str(model_path_or_model)
            try:
                model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[dtype])
            except Exception as exc:  # the loaders' own messages do not name the file
                raise ValueError(f"checkpoint {path} cannot be loaded (missing, corrupt or "
                                 f"truncated?): {type(exc).__name__}: {exc}") from exc
            tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path)
        else:
            model = model_path_or_model
        model = model.to(device).eval()
        layer_types = set(getattr(model.config, "layer_types", None) or ["full_attention"])
        if layer_types != {"full_attention"}:
            raise ValueError(f"HFEngine masks every layer as full attention; this model has "
                             f"{sorted(layer_types)} layers")
        if model.config._attn_implementation != "eager":
            # our decode step passes its own 4D additive mask, which flash kernels do not take;
            # SDPA takes it, and decode_attention spares SDPA's k/v repeat on decode steps
            try:
                register_decode_attention()
                model.set_attn_implementation(DECODE_ATTENTION)
            except (ValueError, KeyError) as exc:  # another transformers release
                warnings.warn(f"HFEngine: {DECODE_ATTENTION} attention unavailable ({exc}); "
                              "decoding with SDPA, which repeats k/v per query head")
                model.set_attn_implementation("sdpa")
        self.model, self.tokenizer = model, tokenizer
        self.device = torch.device(device)
        self.dtype = next(model.parameters()).dtype
        self.max_batch_size = max_batch_size
        on_cuda = self.device.type == "cuda"
        self.compile = on_cuda if compile is None else compile
        # A stop check reads a flag from the device. On CPU that is free, and checking every step
        # means a finished row is refilled at once; on GPU it would stall the host each step, so
        # rows run a few extra (discarded) steps between checks.
        self.stop_check_every = 8 if on_cuda else 1
        self._cache: SlotKVCache | None = None
        self._decode_logits = self._decode_forward
        if self.compile:
            self._decode_logits = torch.compile(self._decode_forward, mode="reduce-overhead",
                                                dynamic=False)
        self.last_stats: dict = {}  # decode steps, prefills, ... of the last generate()
        # generate() and streams run the decode loop on this one thread: CUDA graphs are
        # recorded per thread, and the KV cache is the engine's
        self._stream_thread = ThreadPoolExecutor(1, thread_name_prefix="hf-decode")

    def _decode_forward(self, input_ids, position_ids, attention_mask):
        out = self.model(input_ids=input_ids, position_ids=position_ids,
                         attention_mask=attention_mask, past_key_values=self._cache, use_cache=True)
        return out.logits[:, -1]

    def generate(self, prompts: list[list[int]], sampling: SamplingParams,
                 seeds: list[int] | None = None) -> list[Generation]:
        n = len(prompts)
        if n == 0:
            return []
        if sampling.max_new_tokens <= 0:
            return [Generation([], [], "length") for _ in prompts]
        if min(map(len, prompts)) == 0:
            raise ValueError("every prompt needs at least one token")
        seeds = seeds if seeds is not None else prompt_seeds(sampling, n)
        waiting = list(zip(range(n), prompts, seeds))[::-1]
        results: list[Generation | None] = [None] * n

        def take(k: int, idle: bool, step: int) -> list:
            return [waiting.pop() for _ in range(min(k, len(waiting)))]

        def deliver(key: int, gen: Generation, step: int) -> None:
            results[key] = gen

        # On the decode thread, like streams: one thread records and replays the CUDA graphs,
        # and calls from several threads (they share the KV cache) run one after another.
        self._stream_thread.submit(self._decode_loop, take, deliver, sampling,
                                   max(map(len, prompts)), n).result()
        return results

    def stream(self, sampling: SamplingParams, max_prompt_len: int, episodes: int,
               reproducible: bool = True) -> "HFStream":
        return HFStream(self, sampling, max_prompt_len, episodes, reproducible)

    @torch.inference_mode()
    def _decode_loop(self, take, deliver, sampling: SamplingParams, longest: int,
                     expected: int) -> None:
        """Generate for requests until `take` has no more. `take(k, idle, step)` hands over up
        to k (key, prompt ids, seed) requests at decode step `step` (idle: no row is decoding,
        so wait for one; [] then means no more will come); `deliver(key, generation, step)`
        gets each result. Prompts are at most `longest` ids;
        `expected` bounds how many requests are in flight at once (it sizes the batch)."""
        max_new = sampling.max_new_tokens
        dev, min_value = self.device, torch.finfo(self.dtype).min
        slots = self.max_batch_size if self.compile else min(self.max_batch_size, expected)
        # Room for the longest prompt plus max_new tokens, and max_new more so that each
        # compaction frees at least max_new columns (see below).
        capacity = longest + 2 * max_new
        cache = self._cache
        if cache is None or cache.slots != slots or cache.capacity < capacity:
            step = 512 if self.compile else WINDOW_ALIGN  # compiled: one graph, many calls
            capacity = -(-capacity // step) * step
            cache = self._cache = SlotKVCache(slots, capacity, self.dtype, dev)
        cache.mask.fill_(min_value)
        cache.prefill_rows = None  # in case an earlier call was interrupted mid-prefill
        if self.compile:
            cache.window, cache.rows = (0, cache.capacity), slots

        stop_ids = torch.tensor(sampling.stop_token_ids or [-1], device=dev)
        stop_set = set(sampling.stop_token_ids)

        # Per-row device state. `tokens` holds each row's newest sampled token, whose keys and
        # values are not cached yet: the next decode step feeds it.
        tokens = torch.zeros(slots, dtype=torch.long, device=dev)
        positions = torch.zeros(slots, dtype=torch.long, device=dev)  # RoPE position of `tokens`
        n_sampled = torch.zeros(slots, dtype=torch.long, device=dev)
        row_seeds = torch.zeros(slots, dtype=torch.long, device=dev)
        out_tokens = torch.zeros(slots, max_new, dtype=torch.long, device=dev)
        out_logprobs = torch.zeros(slots, max_new, dtype=torch.float32, device=dev)
        stopped = torch.zeros(slots, dtype=torch.bool, device=dev)
        # Per-row host state (known without asking the device).
        request: list = [None] * slots  # key of the request a row serves, None when free
        count = [0] * slots      # tokens sampled so far
        start = [0] * slots      # first cache column of the row's prompt

        col = longest  # col >= longest always, so any prompt fits left of it
        steps = prefills = compactions = since_check = generated = copied = 0
        must_check = False
        while True:
            # 1. Fill free rows with waiting prompts (the first pass fills the whole batch).
            free = [r for r in range(slots) if request[r] is None]
            batch = take(len(free), len(free) == slots, steps) if free else []
            if batch:
                free = free[:len(batch)]
                # Equal prompts (the n rollouts of a query start alike) are prefilled once;
                # the other rows get copies of its keys and values.
                first: dict[tuple, int] = {}
                source = [first.setdefault(tuple(p), i) for i, (_, p, _) in enumerate(batch)]
                unique = list(first.values())
                width = max(len(p) for _, p, _ in batch)
                ids = torch.zeros(len(unique), width, dtype=torch.long)
                keep = torch.zeros(len(unique), width, dtype=torch.bool)
                for i, b in enumerate(unique):  # left padding: prompts end at `col`
                    p = batch[b][1]
                    ids[i, width - len(p):] = torch.tensor(p)
                    keep[i, width - len(p):] = True
                ids, keep = ids.to(dev), keep.to(dev)
                causal = torch.ones(width, width, dtype=torch.bool, device=dev).tril()
                allowed = (causal & keep[:, None, :])[:, None]  # [rows, 1, query, key]
                prefill_mask = torch.zeros(allowed.shape, dtype=self.dtype, device=dev)
                prefill_mask.masked_fill_(~allowed, min_value)
                cache.prefill_rows = torch.tensor([free[b] for b in unique], device=dev)
                cache.prefill_end = col
                logits = self.model(input_ids=ids, attention_mask=prefill_mask,
                                    position_ids=(keep.long().cumsum(-1) - 1).clamp(min=0),
                                    past_key_values=cache, use_cache=True,
                                    logits_to_keep=1).logits[:, -1]
                cache.prefill_rows = None
                prompt_mask = prefill_mask[:, 0, -1]  # [rows, width]: the columns a row attends
                copies = [i for i, b in enumerate(source) if b != i]
                copied += len(copies)
                if copies:
                    to = torch.tensor([free[i] for i in copies], device=dev)
                    src = torch.tensor([free[source[i]] for i in copies], device=dev)
                    for t in (*cache.keys.values(), *cache.values.values()):
                        t[to, :, col - width:col] = t[src, :, col - width:col]
                    slot = {b: k for k, b in enumerate(unique)}
                    spread = torch.tensor([slot[b] for b in source], device=dev)
                    logits, keep, prompt_mask = logits[spread], keep[spread], prompt_mask[spread]
                rows = torch.tensor(free, device=dev)
                cache.mask[rows] = min_value
                cache.mask[rows, 0, 0, col - width:col] = prompt_mask
                row_seeds[rows] = torch.tensor([seed for _, _, seed in batch], device=dev)
                tok, logp = sample_tokens(logits, sampling,
                                          row_uniforms(row_seeds[rows], torch.zeros_like(rows)))
                tokens[rows], out_tokens[rows, 0], out_logprobs[rows, 0] = tok, tok, logp
                positions[rows] = keep.sum(-1)
                n_sampled[rows] = 1
                stopped[rows] = torch.isin(tok, stop_ids)
                for r, (key, p, _) in zip(free, batch):
                    request[r], count[r], start[r] = key, 1, col - len(p)
                prefills += 1
                must_check = True  # a first token may already be a stop, or max_new may be 1

            live = [r for r in range(slots) if request[r] is not None]
            if not live:
                break  # `take` waited for a request and none will come

            # 2. Hand back finished rows (a stop id sampled, or max_new reached), then refill.
            if must_check or since_check >= self.stop_check_every or \
                    max(count[r] for r in live) >= max_new:
                must_check, since_check = False, 0
                stopped_host = stopped.tolist()
                done = [r for r in live if stopped_host[r] or count[r] >= max_new]
                if done:
                    done_tokens = out_tokens[done].tolist()
                    done_logprobs = out_logprobs[done].tolist()
                    for r, toks, lps in zip(done, done_tokens, done_logprobs):
                        toks, lps = toks[:min(count[r], max_new)], lps[:min(count[r], max_new)]
                        # on GPU a row may have run past its stop before this check: cut there
                        end = next((i + 1 for i, t in enumerate(toks) if t in stop_set), None)
                        reason = "length" if end is None else "stop"
                        generated += len(toks[:end])
                        deliver(request[r], Generation(toks[:end], lps[:end], reason), steps)
                        request[r] = None
                    continue

            # 3. One decode step for the whole batch (eager: rows up to the last live one; free
            # rows are refilled lowest first, so live rows gather at the top as work runs out).
            if col == cache.capacity:
                # Compaction. A live row has at most longest + max_new - 1 columns, so with the
                # capacity above, shift >= max_new; keeping col >= longest keeps prompts fitting.
                shift = min(min(start[r] for r in live), col - longest)
                assert shift > 0, (shift, col, longest)
                cache.shift_left(shift, col)
                col -= shift
                start = [s - shift for s in start]
                compactions += 1
            cache.mask[:, 0, 0, col] = 0.0  # every row's newest token goes to column col
            cache.write_col.fill_(col)
            n = slots
            if not self.compile:  # attend over the live columns only, in whole tiles: CUDA's
                # attention kernels fault on a mask slice whose offset is not 16-aligned
                lo = min(start[r] for r in live) // WINDOW_ALIGN * WINDOW_ALIGN
                hi = -(-(col + 1) // WINDOW_ALIGN) * WINDOW_ALIGN
                cache.window = (lo, min(cache.capacity, hi))
                n = cache.rows = live[-1] + 1
            lo, hi = cache.window
            if self.compile:  # we are done with the previous replay's outputs
                torch.compiler.cudagraph_mark_step_begin()
            mask = cache.mask if self.compile else cache.mask[:n, ..., lo:hi]
            logits = self._decode_logits(tokens[:n, None], positions[:n, None], mask)
            tok, logp = sample_tokens(logits, sampling, row_uniforms(row_seeds[:n], n_sampled[:n]))
            # Live rows are below max_new here (the check above hands back any row that reached
            # it); free rows keep stepping with ignored outputs, and the clamp keeps their writes
            # inside the buffer.
            index = n_sampled[:n].clamp(max=max_new - 1)[:, None]
            out_tokens[:n].scatter_(1, index, tok[:, None])
            out_logprobs[:n].scatter_(1, index, logp[:, None])
            stopped[:n] |= torch.isin(tok, stop_ids)
            tokens[:n] = tok
            positions[:n] += 1
            n_sampled[:n] += 1
            for r in live:
                count[r] += 1
            col += 1
            steps += 1
            since_check += 1

        self.last_stats = {"decode_steps": steps, "prefills": prefills,
                           "prompts_copied": copied, "compactions": compactions,
                           "slots": slots, "generated_tokens": generated}

    @torch.inference_mode()
    def load_weights(self, path_or_state_dict) -> None:
        """Copy new weights into the model in place (keeps tensor addresses, so compiled CUDA
        graphs stay valid). A path is read with `from_pretrained`, which handles shards and
        formats; tied weights (lm_head = embeddings) may be absent from the state dict."""
        state = path_or_state_dict
        if isinstance(state, (str, os.PathLike)):
            from transformers import AutoModelForCausalLM

            from stagent_ray.runio import local_model_dir
            state = AutoModelForCausalLM.from_pretrained(local_model_dir(str(state)),
                                                         dtype=self.dtype).state_dict()
        missing, unexpected = self.model.load_state_dict(state, strict=False)
        current = self.model.state_dict()
        loaded = {current[k].data_ptr() for k in state if k in current}
        missing = [k for k in missing if current[k].data_ptr() not in loaded]
        if missing or unexpected:
            raise ValueError(f"state dict does not fit the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")


def _resolve(future: asyncio.Future, gen: Generation | None, exc: BaseException | None) -> None:
    if not future.done():  # the episode may have been cancelled meanwhile
        future.set_result(gen) if exc is None else future.set_exception(exc)


class HFStream:
    """HFEngine's stream: the decode loop runs on the engine's decode thread, and each turn an
    episode sends joins the running batch when a row is free, while the other rows go on
    decoding. Prompts over `max_prompt_len` ids are refused (they size the cache).

    Reproducible (see `TokenEngine.stream`): time is counted in decode steps. An episode's
    next turn is due `rejoin_steps` steps after its last one was handed back (its first turn
    at step 0); a free row takes only turns that are due, in seed order, and waits for a due
    episode still running its tools. Which turns share a step, and in which rows, then never
    depends on timing, so neither do the floats (batched kernels round differently for
    different batch shapes). Tools that finish within `rejoin_steps` steps stall nothing: two
    steps on CPU, one stop-check interval (8 steps) on GPU, where steps are quicker."""

    def __init__(self, engine: HFEngine, sampling: SamplingParams, max_prompt_len: int,
                 episodes: int, reproducible: bool = True):
        self.engine, self.sampling = engine, sampling
        self.max_prompt_len, self.episodes = max_prompt_len, episodes
        self.reproducible = reproducible
        self.rejoin_steps = max(2, engine.stop_check_every)
        self.cond = threading.Condition()
        self.waiting: list = []           # (due step, seed, future, episode, prompt ids)
        self.in_flight: set = set()       # futures of turns the loop has taken
        self.outside = dict.fromkeys(range(episodes), 0)  # episode -> step its next turn is due
        self.step = 0                     # decode steps so far
        self.closed, self.error = False, None

    async def __aenter__(self):
        self.loop = asyncio.get_running_loop()
        self.done = asyncio.wrap_future(self.engine._stream_thread.submit(self._run))
        return self

    async def __aexit__(self, *exc):
        with self.cond:
            self.closed = True
            self.cond.notify()
        await self.done

    def finish(self, episode: int) -> None:
        with self.cond:
            self.outside.pop(episode, None)
            self.cond.notify()

    async def generate(self, ids: list[int], seed: int, episode: int) -> Generation:
        if not 0 < len(ids) <= self.max_prompt_len:
            raise ValueError(f"prompt of {len(ids)} ids: this stream takes 1 to "
                             f"{self.max_prompt_len}")
        if self.sampling.max_new_tokens <= 0:
            return Generation([], [], "length")
        future = self.loop.create_future()
        with self.cond:
            if self.error is not None:
                raise RuntimeError("the decode loop failed") from self.error
            due = self.outside.pop(episode, self.step)
            self.waiting.append((due, seed, future, episode, ids))
            self.cond.notify()
        return await future

    def _take(self, k: int, idle: bool, step: int) -> list:
        """Up to k turns for free rows at decode step `step`; `idle`: no row is decoding (wait
        for a turn; [] means none will come)."""
        with self.cond:
            self.step = step
            while (ready := self._ready(k, idle, step)) is None and not self.closed:
                self.cond.wait()
            ready = ready or []
            self.in_flight.update(w[2] for w in ready)
            return [((future, episode), ids, seed) for _, seed, future, episode, ids in ready]

    def _ready(self, k: int, idle: bool, step: int) -> list | None:
        """The waiting turns to take now (removed from `waiting`), or None to wait."""
        if not self.reproducible:
            if not self.waiting and idle:
                return None
            ready, self.waiting = self.waiting[:k], self.waiting[k:]
            return ready
        if not self.waiting and not self.outside:  # every episode is in a row or finished
            return None if idle else []
        dues = [w[0] for w in self.waiting] + list(self.outside.values())
        now = max(step, min(dues)) if idle else step  # idle: skip ahead to the next due turn
        if any(due <= now for due in self.outside.values()):
            return None  # a due episode is still running its tools
        ready = sorted((w for w in self.waiting if w[0] <= now),
                       key=lambda w: (w[0], w[1], w[3]))[:k]
        for w in ready:
            self.waiting.remove(w)
        return ready

    def _deliver(self, key: tuple, gen: Generation, step: int) -> None:
        future, episode = key
        with self.cond:
            self.in_flight.discard(future)
            self.outside[episode] = step + self.rejoin_steps
        self.loop.call_soon_threadsafe(_resolve, future, gen, None)

    def _run(self) -> None:
        try:
            self.engine._decode_loop(self._take, self._deliver, self.sampling,
                                     self.max_prompt_len, self.episodes)
        except BaseException as exc:  # every waiting episode gets the error, none hangs
            with self.cond:
                self.error = exc
                failed = [*self.in_flight, *(w[2] for w in self.waiting)]
                self.in_flight.clear()
                self.waiting.clear()
            for future in failed:
                self.loop.call_soon_threadsafe(_resolve, future, None, exc)
            raise
