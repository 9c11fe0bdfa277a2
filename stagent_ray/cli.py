"""The `stagent-ray` command."""

from __future__ import annotations

import argparse
import importlib
import sys

from stagent_ray import __version__
from stagent_ray.pipeline import STAGES


def cmd_version(args) -> int:
    print(__version__)
    return 0


def cmd_run(args) -> int:
    from stagent_ray.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except (ConfigError, OSError) as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    from stagent_ray.pipeline import run_pipeline

    stages = args.stages.split(",") if args.stages else None
    return run_pipeline(cfg, stages=stages, from_stage=args.from_stage)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stagent-ray",
        description="Train tool-using spatio-temporal agents with the STAgent cascade on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("version", help="print the version")
    p.set_defaults(func=cmd_version)

    p = sub.add_parser("run", help="run the cascade (or some of its stages)")
    p.add_argument("--config", default="configs/tiny.yaml")
    p.add_argument("--stages", help=f"comma-separated subset of: {','.join(STAGES)}")
    p.add_argument("--from", dest="from_stage", choices=STAGES, help="run from this stage on")
    p.add_argument("overrides", nargs="*", help="dotted key=value config overrides")
    p.set_defaults(func=cmd_run)

    # Subcommands owned by their packages.
    for module in ("stagent_ray.world.cli", "stagent_ray.tasks.cli", "stagent_ray.serve.cli",
                   "stagent_ray.models.pretrained"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:  # a real import error inside the module must surface
                raise
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from stagent_ray.console import escape_unencodable_stdout

    escape_unencodable_stdout()  # tool and model output may hold any string
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
