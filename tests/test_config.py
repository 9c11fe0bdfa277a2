import glob

import pytest

from stagent_ray.config import Config, ConfigError, load_config, parse_overrides


def test_yaml_files_load():
    paths = sorted(glob.glob("configs/*.yaml"))
    assert "configs/cascade_gpu_six.yaml" in paths and len(paths) >= 7
    for path in paths:
        assert isinstance(load_config(path), Config), path
    cfg = load_config("configs/tiny.yaml")
    assert cfg.teacher.kind == "oracle" and cfg.model.name_or_path == "tiny"


def test_overrides_are_typed_and_nested():
    cfg = load_config("configs/tiny.yaml", ["sft0.lr=3e-4", "score.n_rollouts=4",
                                            "sft0.lora=true", "run_dir=/tmp/x", "ray.num_cpus=2"])
    assert cfg.sft0.lr == 3e-4 and cfg.score.n_rollouts == 4 and cfg.sft0.lora is True
    assert cfg.run_dir == "/tmp/x" and cfg.ray.num_cpus == 2
    assert cfg.sft1.lr == 1e-3  # untouched sections keep the file's values
    assert parse_overrides(["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize("override, needle", [
    (["sft0.lrr=1"], "sft0.lrr"),
    (["nosuch=1"], "nosuch"),
    (["sft0.lr=abc"], "sft0.lr"),
    (["score.n_rollouts=2.5"], "score.n_rollouts"),
    (["score.n_rollouts=0"], "score.n_rollouts"),
    (["rl.algorithm=dpo"], "rl.algorithm"),
    (["tiny_qa.fraction=1.5"], "tiny_qa.fraction"),
    (["sft0=3"], "sft0"),
    (["sft0.lora=yes please"], "sft0.lora"),
    (["noequals"], "key=value"),
    (["pool.families=[unsolvable,teleport]"], "pool.families"),
    (["agent.tool_prompt=tiny"], "agent.tool_prompt"),
    (["policy.dtype=int8"], "policy.dtype"),
    (["policy.compile=maybe"], "policy.compile"),
    (["rollout.gpus_per_actor=-1"], "rollout.gpus_per_actor"),
    (["rollout.num_actors=0"], "rollout.num_actors"),
    (["eval.checkpoints=[sft0,sft2]"], "eval.checkpoints"),
    (["sft1.batch_size=3", "sft1.num_workers=2"], "sft1.batch_size"),
    (["teacher.kind=openai"], "teacher.base_url"),
    (["teacher.kind=hf"], "teacher.model"),
    (["world.backend=replay"], "world.replay_path"),
    (["eval.pass_k=-1"], "eval.pass_k"),
    (["pretrain.docs=-1"], "pretrain.docs"),
    (["pretrain.batch_size=0"], "pretrain.batch_size"),
    (["pretrain.docs=100", "model.name_or_path=Qwen/Qwen3-0.6B"], "pretrain.docs"),
    (["sft1.attention_kernel=fa3"], "sft1.attention_kernel"),
    (["rl.filter_on=rubric"], "rl.filter_on"),
    (["rl.prompt_order=random"], "rl.prompt_order"),
    (["rl.rubric_weight=1.5"], "rl.rubric_weight"),
    (["score.rubric_weight=-0.1"], "score.rubric_weight"),
    (["rl.max_refill_rounds=-1"], "rl.max_refill_rounds"),
])
def test_bad_config_names_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config("configs/tiny.yaml", override)


def test_bad_yaml_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("world:\n  seeed: 3\n")
    with pytest.raises(ConfigError, match="world.seeed"):
        load_config(str(path))
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(str(path))


@pytest.mark.parametrize("old, new", [("score.num_actors", "rollout.num_actors"),
                                      ("score.batch_size", "rollout.batch_size"),
                                      ("score.cpus_per_actor", "rollout.cpus_per_actor"),
                                      ("score.gpus_per_actor", "rollout.gpus_per_actor"),
                                      ("rl.normalize_std", "rl.norm_adv_by_std")])
def test_a_moved_key_names_its_new_place(old, new):
    with pytest.raises(ConfigError, match=f"'{old}' has moved to '{new}'".replace(".", r"\.")):
        load_config("configs/tiny.yaml", [f"{old}=1"])
