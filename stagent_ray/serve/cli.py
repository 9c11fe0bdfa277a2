"""`stagent-ray serve`: the trained agent behind an OpenAI-compatible endpoint."""

from __future__ import annotations


def cmd_serve(args) -> int:
    import time

    from ray import serve

    from stagent_ray.config import EngineConfig, RayConfig, ServeConfig
    from stagent_ray.ray_setup import init_ray
    from stagent_ray.serve.deployments import deploy_policy

    init_ray(RayConfig())
    serve.start(http_options={"host": args.host, "port": args.port})
    serve_cfg = ServeConfig(replicas=args.replicas, host=args.host, port=args.port,
                            gpus_per_replica=1.0 if args.device == "cuda" else 0.0,
                            api_key_env=args.api_key_env)
    deploy_policy(args.model, EngineConfig(kind=args.engine), serve_cfg, name="stagent",
                  ingress=True, model_name=args.model_name)
    print(f"serving {args.model} at http://{args.host}:{args.port}/v1 "
          f"(model name {args.model_name!r}); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.shutdown()
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve a checkpoint as an OpenAI-compatible API")
    p.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    p.add_argument("--model-name", default="stagent")
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--engine", default="hf", choices=["hf", "vllm"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--api-key-env", default=None,
                   help="require the key held in this environment variable")
    p.set_defaults(func=cmd_serve)
