"""`stagent-ray tasks ...`: look at query families and check the oracle.

    stagent-ray tasks sample --family constrained_search --n 5 [--seed 0]
        one JSON object per line: the query with its params and ground truth
    stagent-ray tasks oracle --per-family 50 --noise 0.3 [--seed 0]
        one JSON object: verified rate of the oracle per family
"""

from __future__ import annotations

from stagent_ray.console import print_json
from stagent_ray.tasks.families import FAMILIES, generate_queries
from stagent_ray.tasks.oracle import DEFAULT_NOISE, oracle_verified_rates


def sample(args) -> int:
    from stagent_ray.world.generate import load_world

    world = load_world(args.world_seed)
    for query in generate_queries(world, args.family, args.n, args.seed):
        print_json(query.to_dict())
    return 0


def oracle(args) -> int:
    from stagent_ray.reward import score_trajectory

    rates = oracle_verified_rates(args.per_family, args.noise, score_trajectory, args.seed,
                                  args.world_seed)
    print_json(rates, sort_keys=True)
    return 0


def register(subparsers) -> None:
    tasks = subparsers.add_parser("tasks", help="query families, ground truth and the oracle")
    sub = tasks.add_subparsers(dest="tasks_command", required=True)

    p = sub.add_parser("sample", help="print queries of one family with their ground truth (JSON lines)")
    p.add_argument("--family", required=True, choices=sorted(FAMILIES))
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world-seed", type=int, default=0)
    p.set_defaults(func=sample)

    p = sub.add_parser("oracle", help="print the oracle's verified rate per family (one JSON object)")
    p.add_argument("--per-family", type=int, default=50)
    p.add_argument("--noise", type=float, default=DEFAULT_NOISE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--world-seed", type=int, default=0)
    p.set_defaults(func=oracle)
