"""Stage `pool`: generate candidate queries (or read the user's) and curate them, plus a
held-out eval set.

The funnel, as in the STAgent report: generate → lexical de-duplication (MinHash + LSH over
word shingles) → semantic de-duplication within each intent bucket (hashed n-gram vectors,
or a sentence-transformers model when configured) → k-center greedy diversity selection
down to the target size.

The eval sets share no answer with the pool: the first (data/eval.parquet) is chosen before
the pool and owns its answer keys (family + params, so the same tool calls and ground truth
however a query is worded), one query a key; the pool drops every candidate with one of
them. With `pool.hold_out_city` it asks in a city the pool never shows. The entity split
(data/eval_entities.parquet) asks in the pool's cities about places, anchors, districts and
routes the pool never names (a seeded share of each family's entities is held out of it). A
family whose generator has too few distinct answers fills less than its share and is named
in the stage metrics (`eval_short`, `eval_entities_short`).

With `pool.source: file` the candidates are the user's own queries (JSON lines or Parquet,
see `read_query_files`) instead of generated ones; they go through the same funnel, and a
random `pool.eval_fraction` of the survivors becomes the eval set.

Outputs: data/pool.parquet, data/eval.parquet, data/eval_entities.parquet (world pools), and
the funnel counts in the stage metrics.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import zlib

import numpy as np

# ---------------------------------------------------------------- lexical: MinHash + LSH

_MERSENNE = (1 << 61) - 1


def shingles(text: str, n: int = 3) -> set[str]:
    words = re.findall(r"\w+", text.lower())
    if len(words) < n:
        return {" ".join(words)}
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def minhash_signatures(texts: list[str], num_perm: int = 64, seed: int = 0) -> np.ndarray:
    """[n_texts, num_perm] MinHash signatures of the texts' word 3-shingles."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _MERSENNE, num_perm, dtype=np.uint64)
    b = rng.integers(0, _MERSENNE, num_perm, dtype=np.uint64)
    sigs = np.empty((len(texts), num_perm), dtype=np.uint64)
    for i, text in enumerate(texts):
        h = np.array([zlib.crc32(s.encode()) for s in shingles(text)], dtype=np.uint64)
        # (a*h + b) mod p, in uint64 with wrap-around: a universal-enough hash family here.
        sigs[i] = ((h[:, None] * a[None, :] + b[None, :]) % _MERSENNE).min(axis=0)
    return sigs


def jaccard(a: set, b: set) -> float:
    return len(a & b) / max(1, len(a | b))


def lexical_dedup(texts: list[str], threshold: float = 0.8, bands: int = 16) -> list[int]:
    """Indices to keep: the first of every group of texts with shingle Jaccard >= threshold.

    LSH proposes candidate pairs (equal signature bands); exact Jaccard confirms them.
    """
    sigs = minhash_signatures(texts, num_perm=bands * 4)
    rows = sigs.shape[1] // bands
    shingle_sets = [shingles(t) for t in texts]
    dropped: set[int] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = {}
        for i in range(len(texts)):
            buckets.setdefault(sigs[i, band * rows:(band + 1) * rows].tobytes(), []).append(i)
        for members in buckets.values():
            for j_pos, j in enumerate(members):
                if j in dropped:
                    continue
                for i in members[:j_pos]:
                    if i not in dropped and jaccard(shingle_sets[i], shingle_sets[j]) >= threshold:
                        dropped.add(j)
                        break
    return [i for i in range(len(texts)) if i not in dropped]


# ---------------------------------------------------------------- semantic + diversity

def hashed_ngram_vectors(texts: list[str], dim: int = 4096) -> np.ndarray:
    """[n, dim] L2-normalised bag of hashed word unigrams and bigrams."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for i, text in enumerate(texts):
        words = re.findall(r"\w+", text.lower())
        for gram in words + [f"{a} {b}" for a, b in zip(words, words[1:])]:
            out[i, int(hashlib.md5(gram.encode()).hexdigest()[:8], 16) % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def embed(texts: list[str], embedder: str = "hashed") -> np.ndarray:
    if embedder == "hashed":
        return hashed_ngram_vectors(texts)
    from sentence_transformers import SentenceTransformer  # optional, user-installed

    vecs = SentenceTransformer(embedder).encode(texts, normalize_embeddings=True)
    return np.asarray(vecs, dtype=np.float32)


def semantic_dedup(vectors: np.ndarray, buckets: list[str], threshold: float = 0.9) -> list[int]:
    """Indices to keep: within each bucket, drop an item whose cosine to a kept one >= threshold."""
    keep = []
    for bucket in sorted(set(buckets)):
        kept_vecs: list[np.ndarray] = []
        for i in (i for i, b in enumerate(buckets) if b == bucket):
            if kept_vecs and float(np.max(np.stack(kept_vecs) @ vectors[i])) >= threshold:
                continue
            kept_vecs.append(vectors[i])
            keep.append(i)
    return sorted(keep)


def k_center_greedy(vectors: np.ndarray, k: int, seed: int = 0) -> list[int]:
    """Pick k points, each the farthest from those already picked (keeps the long tail)."""
    n = len(vectors)
    if k >= n:
        return list(range(n))
    picked = [int(np.random.default_rng(seed).integers(n))]
    dist = np.linalg.norm(vectors - vectors[picked[0]], axis=1)
    while len(picked) < k:
        nxt = int(np.argmax(dist))
        picked.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(vectors - vectors[nxt], axis=1))
    return sorted(picked)


# ---------------------------------------------------------------- the funnel

def curate(queries: list, pool_cfg, seed: int = 0) -> tuple[list, dict]:
    """The funnel over task records; returns the kept queries and the count after each step."""
    counts = {"generated": len(queries)}
    texts = [q.text for q in queries]
    exact = list({t: i for i, t in reversed(list(enumerate(texts)))}.values())
    queries = [queries[i] for i in sorted(exact)]
    counts["exact_dedup"] = len(queries)
    keep = lexical_dedup([q.text for q in queries], pool_cfg.lsh_threshold)
    queries = [queries[i] for i in keep]
    counts["lexical_dedup"] = len(queries)
    vectors = embed([q.text for q in queries], pool_cfg.embedder)
    keep = semantic_dedup(vectors, [f"{q.intent['level1']}/{q.intent['level2']}" for q in queries],
                          pool_cfg.semantic_threshold)
    queries, vectors = [queries[i] for i in keep], vectors[keep]
    counts["semantic_dedup"] = len(queries)
    # k-center per family, with quotas proportional to what survived, so no family vanishes.
    families = sorted({q.family for q in queries})
    selected = []
    for family in families:
        idx = [i for i, q in enumerate(queries) if q.family == family]
        quota = max(1, round(pool_cfg.target_size * len(idx) / len(queries)))
        selected += [idx[j] for j in k_center_greedy(vectors[idx], quota, seed)]
    queries = [queries[i] for i in sorted(selected)]
    counts["k_center"] = len(queries)
    return queries, counts


# ---------------------------------------------------------------- the user's own queries

# A free-form travel request is most often a search under constraints; its task type
# (retrieval) sets the judge's rubric weights.
DEFAULT_INTENT = ("Discovery", "constrained_poi_search")


def query_from_record(record: dict, text_field: str, where: str):
    """One row of a user's file -> a Query (`where` names the file and line for errors).

    Metadata sits in a `metadata` mapping, beside the text, or both (beside wins). `family`
    (default "user"), `intent_l1`/`intent_l2` (a node of tasks/taxonomy.py), `difficulty`
    (-1..5, default 1) and `city` are read; the rest becomes `params`. A `reference` answer
    is kept as ground_truth {"reference": ...} (stored with the query; the judge does not see
    it yet); without one the ground truth is empty.
    """
    from stagent_ray.tasks.query import Query
    from stagent_ray.tasks.taxonomy import TAXONOMY

    text = record.get(text_field)
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{where}: no '{text_field}' field holding the query text "
                         f"(pool.text_field names it)")
    meta = record.get("metadata") or {}
    if isinstance(meta, str):  # Parquet files often keep metadata as a JSON string
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: 'metadata' is not valid JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: 'metadata' must be a mapping, got {type(meta).__name__}")
    meta = {**meta, **{k: v for k, v in record.items()
                       if k not in (text_field, "metadata", "reference")}}
    meta = {k: v for k, v in meta.items() if v is not None}  # Parquet nulls: absent

    level1, level2 = meta.pop("intent_l1", None), meta.pop("intent_l2", None)
    if level1 is None and level2 is None:
        level1, level2 = DEFAULT_INTENT
    elif level1 is None:
        level1 = next((l1 for l1, nodes in TAXONOMY.items() if level2 in nodes), None)
    if level2 not in TAXONOMY.get(level1, {}):
        known = ", ".join(f"{l1}/{l2}" for l1, nodes in TAXONOMY.items() for l2 in nodes)
        raise ValueError(f"{where}: intent {level1}/{level2} is not in the taxonomy; "
                         f"intent_l2 (and optionally intent_l1) must name one of: {known}")
    difficulty = meta.pop("difficulty", 1)
    if (isinstance(difficulty, bool) or not isinstance(difficulty, int)
            or not -1 <= difficulty <= 5):
        raise ValueError(f"{where}: difficulty must be an integer from -1 to 5, got {difficulty!r}")
    reference = record.get("reference")
    text = text.strip()
    return Query(
        query_id=hashlib.sha1(text.encode("utf-8")).hexdigest()[:16],
        family=str(meta.pop("family", "user")), intent={"level1": level1, "level2": level2},
        difficulty=difficulty, text=text, city=str(meta.pop("city", "")),
        params=json.loads(json.dumps(meta, default=str)),  # dates etc. as text: rows are JSON
        ground_truth={} if reference is None else {"reference": reference})


def read_query_files(paths: list[str], text_field: str = "text") -> list:
    """The user's queries from .parquet files (one row each) or JSON lines (anything else).

    Paths may be local or URIs (s3://, gs://). A malformed line, a row without text or an
    unknown intent stops the stage with the file and line named.
    """
    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from stagent_ray.runio import filesystem, read_jsonl

    queries = []
    for path in paths:
        fs, inner = filesystem(path)
        if fs.get_file_info(inner).type == pafs.FileType.NotFound:
            raise ValueError(f"pool.query_files: {path} does not exist")
        if path.endswith(".parquet"):
            rows = pq.read_table(inner, filesystem=fs).to_pylist()
            queries += [query_from_record(r, text_field, f"{path} row {i + 1}")
                        for i, r in enumerate(rows)]
        else:
            queries += [query_from_record(record, text_field, f"{path}:{lineno}")
                        for lineno, record in read_jsonl(path, numbered=True)]
    if not queries:
        raise ValueError(f"pool.query_files: no queries in {', '.join(paths)}")
    return queries


def entity_eval_size(pool_cfg) -> int:
    """Queries a family in the entity split (pool.entity_eval_per_family; None: as many as
    the first eval set)."""
    n = pool_cfg.entity_eval_per_family
    return pool_cfg.eval_per_family if n is None else n


def held_out_city(world, pool_cfg) -> str | None:
    """The city the pool never shows (the last), with pool.hold_out_city on; else None."""
    return world.cities[-1].name if pool_cfg.hold_out_city else None


def eval_queries(world, families: list[str], per_family: int, seed: int, exclude_keys: set[str],
                 prefer_city: str | None = None, key_share: float = 1.0,
                 exclude_entities: set[str] | None = None,
                 skip_city: str | None = None) -> tuple[list, dict]:
    """Up to `per_family` queries of each family, one per answer key (family + params), none
    with a key in `exclude_keys` (the pool's, the tiny-QA set's, an earlier eval set's): a
    paraphrase of a seen query is not unseen. Drawn from their own stream (`seed`), those in
    `prefer_city` first. `key_share` caps a family's queries at that share of the distinct keys
    its generator gave in this draw (so a small family, e.g. unsolvable's 10 requests, leaves
    the rest to the pool). With `exclude_entities`, only queries that name an entity and none
    of those (the entity split); none in `skip_city`. Returns the queries and, per family
    that could not fill its share, {"wanted", "got", "distinct_keys"}."""
    from stagent_ray.tasks.families import generate_queries
    from stagent_ray.tasks.query import answer_key, named_entities

    city_names = {c.name for c in world.cities}
    out, short = [], {}
    for family in families:
        drawn = [q for q in generate_queries(world, family, per_family * 6, seed=seed)
                 if skip_city is None or q.city != skip_city]
        drawn.sort(key=lambda q: q.city != prefer_city)  # stable: draw order within each
        distinct = len({answer_key(q) for q in drawn})
        cap = min(per_family, int(key_share * distinct))
        taken = set()
        for q in drawn:
            key = answer_key(q)
            if len(taken) >= cap:
                break
            if key in exclude_keys or key in taken:
                continue
            if exclude_entities is not None:
                names = named_entities(q, city_names)
                if not names or names & exclude_entities:
                    continue
            taken.add(key)
            out.append(q)
        if len(taken) < per_family:
            short[family] = {"wanted": per_family, "got": len(taken), "distinct_keys": distinct}
    return out, short


# ---------------------------------------------------------------- the stage

def run_pool(cfg) -> dict:
    """Write data/pool.parquet and data/eval.parquet; return the stage metrics."""
    from stagent_ray.runio import query_to_row, write_table
    from stagent_ray.tasks.families import FAMILIES, generate_queries
    from stagent_ray.world.generate import load_world

    run_dir = cfg.run_dir

    if cfg.pool.source == "file":
        # No world to hold a city out of: the eval set is a random share of the curated
        # queries, so its texts are disjoint from the pool's (the funnel removed duplicates).
        queries, counts = curate(read_query_files(cfg.pool.query_files, cfg.pool.text_field),
                                 cfg.pool, cfg.seed)
        if len(queries) < 2:
            raise ValueError(f"pool: {len(queries)} query left after curation; a pool and an "
                             f"eval set need at least 2")
        n_eval = min(len(queries) - 1, max(1, round(cfg.pool.eval_fraction * len(queries))))
        held = set(random.Random(cfg.seed).sample(range(len(queries)), n_eval))
        pool = [q for i, q in enumerate(queries) if i not in held]
        eval_set = [q for i, q in enumerate(queries) if i in held]
        write_table(run_dir, "data/pool.parquet", [query_to_row(q) for q in pool])
        write_table(run_dir, "data/eval.parquet", [query_to_row(q) for q in eval_set])
        return {"source": "file", "funnel": counts, "pool": len(pool), "eval": len(eval_set),
                "families": {f: sum(q.family == f for q in pool)
                             for f in sorted({q.family for q in pool})}}

    from stagent_ray.tasks.query import answer_key, named_entities

    w, pc = cfg.world, cfg.pool
    world = load_world(w.seed, w.n_cities, w.pois_per_city, w.today)
    city_names = {c.name for c in world.cities}
    # The eval set's city is one the pool never shows (the hard test: unseen place names);
    # with pool.hold_out_city off the eval queries are unseen queries in the same cities.
    held_out = held_out_city(world, pc)
    families = pc.families or FAMILIES  # names checked by config.validate
    candidates = []
    for family in families:
        # Over-generate so the funnel has something to remove.
        candidates += generate_queries(world, family, pc.queries_per_family, seed=cfg.seed)
    candidates = [q for q in candidates if held_out is None or q.city != held_out]
    # The eval set is chosen first and owns its answer keys: the pool drops every candidate
    # that shares one. At most half a family's keys go to eval, so small families keep some.
    eval_set, eval_short = eval_queries(world, families, pc.eval_per_family, cfg.seed + 10_000,
                                        set(), held_out, key_share=0.5)
    eval_keys = {answer_key(q) for q in eval_set}
    # The entity split: a seeded share of the entities each family's candidates name is held
    # out of the pool, so that families with few places (districts, routes) keep some too.
    rng, held_entities = random.Random(cfg.seed + 30_000), set()
    for family in families:
        names = sorted(set().union(*(named_entities(q, city_names) for q in candidates
                                     if q.family == family)) - held_entities)
        if names:
            held_entities |= set(rng.sample(names, max(1, round(pc.held_out_entity_share
                                                                * len(names)))))
    candidates = [q for q in candidates if answer_key(q) not in eval_keys
                  and not named_entities(q, city_names) & held_entities]
    pool, counts = curate(candidates, pc, cfg.seed)
    pool_keys = {answer_key(q) for q in pool}
    pool_entities = set().union(*(named_entities(q, city_names) for q in pool))
    entity_set, entity_short = eval_queries(
        world, families, entity_eval_size(pc), cfg.seed + 30_000, pool_keys | eval_keys,
        exclude_entities=pool_entities, skip_city=held_out)
    write_table(run_dir, "data/pool.parquet", [query_to_row(q) for q in pool])
    write_table(run_dir, "data/eval.parquet", [query_to_row(q) for q in eval_set])
    write_table(run_dir, "data/eval_entities.parquet", [query_to_row(q) for q in entity_set])
    return {"funnel": counts, "pool": len(pool), "eval": len(eval_set),
            "eval_entities": len(entity_set),
            "eval_held_out_city": sum(held_out is not None and q.city == held_out
                                      for q in eval_set),
            "held_out_city": held_out, "held_out_entities": len(held_entities),
            # families whose generator could not fill their eval share, and why
            "eval_short": eval_short, "eval_entities_short": entity_short,
            "families": {f: sum(q.family == f for q in pool) for f in families}}
