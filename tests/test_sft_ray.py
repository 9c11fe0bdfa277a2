"""SFT on Ray Train (2 CPU workers, FSDP2 over gloo): a worker is SIGKILLed mid-run, the
stage is run again and resumes from its last checkpoint; full fine-tuning and LoRA."""

import json
import os

import pytest
import torch

from stagent_ray.config import Config, SFTConfig
from stagent_ray.models.build import build_tiny_model, save_checkpoint
from stagent_ray.models.chat_format import render_ids
from stagent_ray.models.tokenizer import SYNTAX_LINES, train_tokenizer
from stagent_ray.runio import write_table
from stagent_ray.train.data import batch_rows, pack
from stagent_ray.train.losses import sft_loss
from stagent_ray.train.sft import packed_logits, run_sft
from test_sft import TINY, conversation

# The session Ray (conftest) starts without a dashboard; init_ray then points the
# state API at a dead address (see ray_setup.py for why).

N_CONVERSATIONS = 24


@pytest.fixture
def run_dir(tmp_path):
    """A run dir with data/train.parquet and a fresh tiny model in ckpt/base."""
    rows = [{"query_id": f"q{i}", "family": "f", "text": "t",
             "messages": json.dumps(conversation(i))} for i in range(N_CONVERSATIONS)]
    write_table(str(tmp_path), "data/train.parquet", rows)
    tok = train_tokenizer(SYNTAX_LINES + [r["messages"] for r in rows], 500)
    save_checkpoint(build_tiny_model(TINY, tok, seed=0), tok, str(tmp_path / "ckpt/base"))
    return str(tmp_path)


def make_cfg(run_dir: str, **sft) -> Config:
    cfg = Config(run_dir=run_dir)
    cfg.sft0 = SFTConfig(**{"lr": 3e-3, "epochs": 5, "batch_size": 4, "seq_len": 256,
                            "warmup_steps": 2, "num_workers": 2, "checkpoint_every": 4,
                            "log_every": 1, **sft})
    return cfg


def mean_loss(path: str) -> float:
    """Token-mean SFT loss of the checkpoint at `path` on the training conversations."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    packed = pack([render_ids(tok, conversation(i)) for i in range(N_CONVERSATIONS)], 256,
                  tok.pad_token_id)
    with torch.no_grad():
        logits = packed_logits(model, torch.from_numpy(packed["input_ids"]).long(),
                               torch.from_numpy(packed["position_ids"]).long())
        return float(sft_loss(logits, torch.from_numpy(packed["labels"]).long(),
                              torch.from_numpy(packed["loss_mask"])))


def first_step_reference(run_dir: str) -> tuple[float, float]:
    """Loss and grad norm of step 1 computed in one process, without sharding: what the
    two FSDP workers, each holding half of the batch and half of every weight, must report."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = os.path.join(run_dir, "ckpt/base")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    packed = pack([render_ids(tok, conversation(i)) for i in range(N_CONVERSATIONS)], 256,
                  tok.pad_token_id)
    rows = batch_rows(len(packed["input_ids"]), 4, step=0, seed=0)
    t = {k: torch.from_numpy(v[rows]).long() for k, v in packed.items() if k != "real_tokens"}
    loss = sft_loss(packed_logits(model, t["input_ids"], t["position_ids"]), t["labels"],
                    t["loss_mask"])
    loss.backward()
    return float(loss.detach()), float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9))


def read_metrics(run_dir: str) -> dict[int, dict]:
    with open(os.path.join(run_dir, "train", "sft0_metrics.jsonl")) as f:
        return {m["step"]: m for m in map(json.loads, f)}


def test_killed_run_resumes_and_exports(ray_session, run_dir):
    from ray.train import FailureConfig

    # The chunked loss (the GPU default) here: its step-1 loss and grad norm over two FSDP
    # ranks must equal the logits path run in one process (first_step_reference).
    cfg = make_cfg(run_dir, chunked_loss=True)
    no_retry = FailureConfig(max_failures=0, controller_failure_limit=0)
    args = (cfg, "sft0", "data/train.parquet", "ckpt/base", "ckpt/sft0", [])
    # Rank 0 is SIGKILLed as it starts step 7: steps 1-6 ran, the last checkpoint is step 4.
    # Ray registers a checkpoint once the controller has polled every rank's report of it;
    # two more reports (steps 5, 6) guarantee that, so the resume point is deterministic.
    with pytest.raises(Exception):
        run_sft(*args, max_steps=12, failure_config=no_retry, fail_at_step=7)
    first = read_metrics(run_dir)
    assert sorted(first) == [1, 2, 3, 4, 5, 6] and first[1]["chunked_loss"] is True
    loss1, grad_norm1 = first_step_reference(run_dir)
    assert abs(first[1]["loss"] - loss1) < 1e-4          # token mean over the global batch
    assert abs(first[1]["grad_norm"] - grad_norm1) < 1e-4  # global norm over both shards
    assert not os.path.exists(os.path.join(run_dir, "ckpt/sft0"))

    summary = run_sft(*args, max_steps=12, failure_config=no_retry)
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 12
    second = read_metrics(run_dir)
    assert sorted(second) == list(range(1, 13))  # the undone steps 5-6 were replaced
    for step in (5, 6):  # same state, same batches: the resumed run repeats them exactly
        assert abs(second[step]["loss"] - first[step]["loss"]) < 1e-4
        assert second[step]["lr"] == first[step]["lr"]
    assert second[12]["loss"] < second[1]["loss"]

    # The export is a plain Hugging Face checkpoint, and it learned the data.
    assert summary["path"] == os.path.join(run_dir, "ckpt/sft0")
    assert mean_loss(summary["path"]) < mean_loss(os.path.join(run_dir, "ckpt/base")) - 0.5


def test_lora_resumes_trains_and_exports_merged(ray_session, run_dir):
    from ray.train import FailureConfig
    from transformers import AutoModelForCausalLM

    # The chunked loss through the peft wrapper, with the lm_head frozen (no weight gradient).
    cfg = make_cfg(run_dir, lora=True, lora_rank=4, lr=1e-2, checkpoint_every=3,
                   chunked_loss=True)
    no_retry = FailureConfig(max_failures=0, controller_failure_limit=0)
    args = (cfg, "sft0", "data/train.parquet", "ckpt/base", "ckpt/lora", [])
    # LoRA checkpoints hold only the adapters (+ their optimizer state): resume must work too.
    with pytest.raises(Exception):
        run_sft(*args, max_steps=8, failure_config=no_retry, fail_at_step=6)  # 2 reports after 3
    first = read_metrics(run_dir)
    assert first[1]["chunked_loss"] is True
    summary = run_sft(*args, max_steps=8, failure_config=no_retry)
    assert summary["steps"] == 8 and summary["resumed_from_step"] == 3
    second = read_metrics(run_dir)
    assert all(abs(second[s]["loss"] - first[s]["loss"]) < 1e-4 for s in (4, 5))

    base = AutoModelForCausalLM.from_pretrained(os.path.join(run_dir, "ckpt/base"))
    tuned = AutoModelForCausalLM.from_pretrained(summary["path"])  # merged: no peft needed
    base_sd, tuned_sd = base.state_dict(), tuned.state_dict()
    assert base_sd.keys() == tuned_sd.keys()                       # no lora_A / lora_B left
    changed = [k for k in base_sd if not torch.equal(base_sd[k], tuned_sd[k])]
    assert any("q_proj" in k for k in changed) and any("down_proj" in k for k in changed)
    assert not any("embed_tokens" in k or "norm" in k for k in changed)  # frozen stays frozen
    assert mean_loss(summary["path"]) < mean_loss(os.path.join(run_dir, "ckpt/base"))


def test_pretraining_builds_a_base_that_predicts_world_text(ray_session, tmp_path):
    """pretrain.docs > 0: the tiny base is built at ckpt/base_init, trained on Ray Train on the
    synthetic world text, and exported to ckpt/base (what SFT-0 starts from), with a lower loss
    than the random weights on documents it never saw; a second call reuses it."""
    from stagent_ray.config import load_config
    from stagent_ray.models.lm_corpus import documents
    from stagent_ray.stages.base import run_base

    run_dir = str(tmp_path / "run")
    cfg = load_config("configs/tiny.yaml", [
        f"run_dir={run_dir}", "model.hidden_size=64", "model.intermediate_size=128",
        "model.num_layers=2", "model.num_heads=2", "model.num_kv_heads=1",
        "model.vocab_size=2048", "pretrain.docs=1200", "pretrain.batch_size=4",
        "pretrain.seq_len=256", "pretrain.epochs=3", "pretrain.warmup_steps=2",
        "pretrain.num_workers=2", "pretrain.log_every=5"])
    summary = run_base(cfg)
    path = summary["model"]
    assert path == os.path.join(run_dir, "ckpt/base") and summary["built"]

    def text_loss(model_dir: str) -> float:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        tok = AutoTokenizer.from_pretrained(model_dir)
        held_out = documents(40, seed=99, today=cfg.world.today)
        ids = tok(held_out, return_tensors="pt", padding=True)
        labels = ids.input_ids.masked_fill(ids.attention_mask == 0, -100)
        with torch.no_grad():
            return float(model(**ids, labels=labels).loss)

    before, after = text_loss(os.path.join(run_dir, "ckpt/base_init")), text_loss(path)
    assert after < 0.6 * before, (before, after)
    with open(os.path.join(run_dir, "train", "pretrain_metrics.jsonl")) as f:
        assert json.loads(f.readlines()[-1])["step"] > 10
    mtime = os.path.getmtime(os.path.join(path, "config.json"))
    assert run_base(cfg) == {"model": path, "built": False}
    assert os.path.getmtime(os.path.join(path, "config.json")) == mtime
