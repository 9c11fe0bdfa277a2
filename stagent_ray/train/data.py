"""SFT data: trajectories -> token ids + loss masks -> packed fixed-length rows.

Packing puts several trajectories into one row of `seq_len` tokens. Attention must not
cross from one trajectory into the next, so `position_ids` restart at 0 for each one:
transformers (5.x) reads a position drop as a sequence border — the SDPA and eager paths
build a block-diagonal causal mask from it, flash-attention turns it into varlen
`cu_seqlens` — provided no attention mask and no KV cache are passed (sft.packed_logits).
The test `test_packed_loss_equals_unpacked` holds us to that, and checks that it would
catch a leak.

Shapes: N packed rows, T = seq_len.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np


def tokenize_rows(rows: list[dict], fmt, tool_schemas: list[dict] | None,
                  seq_len: int) -> tuple[list[tuple[list[int], list[int]]], dict]:
    """Render each row's `messages` (a JSON string or a list) to (ids, loss_mask) in the
    model's chat format (`fmt`: models/formats.py).

    A trajectory longer than seq_len + 1 tokens is cut at the end (the +1 is the token the
    last input predicts); one left with no assistant token to learn is dropped. Returns the
    samples and counts of what happened (and the shortest rendered length), so the caller
    can report them.
    """
    samples, stats = [], {"rows": len(rows), "truncated": 0, "dropped": 0, "shortest": None}
    for row in rows:
        messages = row["messages"]
        if isinstance(messages, str):
            messages = json.loads(messages)
        ids, mask = fmt.render_ids(messages, tool_schemas)
        stats["shortest"] = min(stats["shortest"] or len(ids), len(ids))
        if len(ids) > seq_len + 1:
            ids, mask = ids[:seq_len + 1], mask[:seq_len + 1]
            stats["truncated"] += 1
        if sum(mask[1:]) == 0:  # mask[0] is never a target
            stats["dropped"] += 1
            continue
        samples.append((ids, mask))
    return samples, stats


def pack(samples: list[tuple[list[int], list[int]]], seq_len: int,
         pad_id: int) -> dict[str, np.ndarray]:
    """First-fit-decreasing packing of (ids, mask) samples into rows of seq_len inputs.

    Each sample is shifted on its own (inputs = ids[:-1], labels = ids[1:]), so no position
    is ever asked to predict the first token of the next sample. The tail of a row is
    padding: label pad_id, mask 0, positions 0.. (its own "sequence", attended by nobody
    else). Returns int32/int8 arrays:
      input_ids, labels, position_ids [N, T]; loss_mask [N, T]; real_tokens [N].
    """
    shifted = [(ids[:-1], ids[1:], mask[1:]) for ids, mask in samples]
    order = sorted(range(len(shifted)), key=lambda i: -len(shifted[i][0]))
    rows: list[list[int]] = []   # sample indices per row
    free: list[int] = []         # room left per row
    for i in order:
        n = len(shifted[i][0])
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(seq_len - n)
    N = len(rows)
    out = {"input_ids": np.full((N, seq_len), pad_id, np.int32),
           "labels": np.full((N, seq_len), pad_id, np.int32),
           "position_ids": np.zeros((N, seq_len), np.int32),
           "loss_mask": np.zeros((N, seq_len), np.int8),
           "real_tokens": np.zeros(N, np.int64)}
    for r, members in enumerate(rows):
        at = 0
        for i in sorted(members):  # original order inside a row: deterministic, readable
            inputs, labels, mask = shifted[i]
            n = len(inputs)
            out["input_ids"][r, at:at + n] = inputs
            out["labels"][r, at:at + n] = labels
            out["loss_mask"][r, at:at + n] = mask
            out["position_ids"][r, at:at + n] = np.arange(n)
            at += n
        out["position_ids"][r, at:] = np.arange(seq_len - at)
        out["real_tokens"][r] = at
    return out


def steps_per_epoch(n_rows: int, batch_size: int) -> int:
    return max(1, -(-n_rows // batch_size))


def batch_rows(n_rows: int, batch_size: int, step: int, seed: int) -> np.ndarray:
    """Row indices of the global batch for optimizer step `step` (0-based) -> [batch_size].

    A fresh permutation each epoch, seeded by (seed, epoch); the last batch of an epoch wraps
    to the epoch's start so every batch is full. Depends on nothing but the step, which is
    why the step alone is the data position a checkpoint needs.
    """
    per_epoch = steps_per_epoch(n_rows, batch_size)
    epoch, k = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
    return perm[(k * batch_size + np.arange(batch_size)) % n_rows]


def fingerprint(packed: dict[str, np.ndarray]) -> str:
    """A short hash of the packed data; a resumed run refuses a checkpoint made on other data."""
    h = hashlib.sha1()
    for key in ("input_ids", "loss_mask"):
        h.update(np.ascontiguousarray(packed[key]).tobytes())
    return h.hexdigest()[:16]
