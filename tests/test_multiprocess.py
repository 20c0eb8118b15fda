"""Data-parallel training: two processes on the CPU through the shipped multi-GPU accelerate config; the configs."""

import json
import os
import socket
import sys

import pytest
import yaml
from conftest import REPO, run_script

ACCELERATE = os.path.join(os.path.dirname(sys.executable), "accelerate")  # the venv's, whether or not it is activated


TRAIN = [{"instruction": f"質問{index}は何ですか？", "response": f"答えは{index}番目のクトゥルフです。"} for index in range(30)]
QUIZ = [{"instruction": f"質問{index}の答えは？", "response": f"{index}番目です。", "answers": [f"{index}番目"]}
        for index in range(3)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def two_process_run(tiny_model_dir, tmp_path_factory):
    """train_sft.py (with the test's data trace) launched by `accelerate launch --num_processes 2` on the CPU
    (DDP over gloo), 3 steps, then the knowledge check on the main process while the other waits."""
    work = tmp_path_factory.mktemp("two-processes")
    config = yaml.safe_load((REPO / "sft_config.yaml").read_text(encoding="utf-8"))
    config.update(sample_prompts=[], model_name_or_path=str(tiny_model_dir), output_dir=str(work / "out"),
                  train_file=write_jsonl(work / "train.jsonl", TRAIN), eval_file=write_jsonl(work / "eval.jsonl", QUIZ),
                  knowledge_check_files=[write_jsonl(work / "quiz.jsonl", QUIZ)])
    (work / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    with socket.socket() as probe:  # a free port: the default 29500 may be taken by another run on this machine
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_script(
        [
            ACCELERATE, "launch", "--config_file", "configs/multi_gpu.yaml", "--num_processes", "2",
            "--main_process_port", str(port),
            "tests/train_with_hooks.py", "--config", str(work / "config.yaml"),
            "--use_cpu", "true", "--bf16", "false", "--dtype", "float32",
            "--max_steps", "3", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
            "--save_strategy", "no", "--report_to", "none", "--ddp_find_unused_parameters", "false",
        ],
        env={"CTHULHU_TEST_TRACE": str(work / "trace")},
        timeout=300,
    )
    return work, result


def train_examples(work, tokenizer_dir) -> set[tuple[int, ...]]:
    from cthulhu_sft.data import load_records, tokenize_records
    from cthulhu_sft.format import MistralFormat

    rows, _ = tokenize_records(load_records(work / "train.jsonl"), MistralFormat.from_pretrained(str(tokenizer_dir)), None)
    return {tuple(row["input_ids"]) for row in rows}


@pytest.mark.slow
def test_two_processes_write_one_adapter(two_process_run):
    work, result = two_process_run
    assert result.returncode == 0, result.stderr[-3000:]
    adapters = sorted(path.relative_to(work) for path in work.rglob("adapter_model.safetensors"))
    assert [str(path) for path in adapters] == ["out/adapter_model.safetensors"]
    run = json.loads((work / "out" / "run.json").read_text())
    assert run["status"] == "finished"
    assert result.stdout.count("saved the adapter") == 1  # only the main process writes
    # the knowledge check ran once, on the main process, and the other process did not hang at the barrier
    assert run["knowledge_check"]["status"] == "done"
    assert run["knowledge_check"]["sets"][0]["results"]["adapter"]["n"] == 3
    assert sorted(path.name for path in (work / "trace").glob("after-training-*")) == ["after-training-0"]


@pytest.mark.slow
def test_two_processes_train_on_different_examples(two_process_run, tokenizer_dir):
    work, result = two_process_run
    assert result.returncode == 0, result.stderr[-3000:]
    assert (work / "trace").is_dir(), "the test wrapper did not write the examples of each process"
    train = train_examples(work, tokenizer_dir)
    seen = {}
    for rank in (0, 1):
        lines = (work / "trace" / f"process-{rank}.jsonl").read_text().splitlines()
        seen[rank] = [tuple(json.loads(line)) for line in lines]
        seen[rank] = [ids for ids in seen[rank] if ids in train]  # the final evaluation traces eval examples too
        assert len(seen[rank]) >= 3 * 2, f"process {rank} trained on {len(seen[rank])} examples, 3 steps x 2 expected"
    # Within the first epoch (3 steps x 2 examples x 2 processes of 30) each example goes to one process only
    assert not set(seen[0]) & set(seen[1])


@pytest.mark.parametrize("name", ["multi_gpu.yaml", "multi_node.yaml", "fsdp_qlora.yaml"])
def test_shipped_accelerate_configs_load(name):
    """Each config goes through accelerate's own parser, so a stale or misspelled key fails here."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    config = load_config_from_file(str(REPO / "configs" / name))
    assert config.mixed_precision == "no"  # precision comes from sft_config.yaml (bf16), as in accelerate_config.yaml
    if name == "fsdp_qlora.yaml":
        assert config.distributed_type == DistributedType.FSDP
        assert config.fsdp_config["fsdp_use_orig_params"] is False
        assert config.fsdp_config["fsdp_cpu_ram_efficient_loading"] is True
    else:
        assert config.distributed_type == DistributedType.MULTI_GPU
        assert config.num_machines == (2 if name == "multi_node.yaml" else 1)
    if name == "multi_node.yaml":
        assert config.main_process_ip and config.main_process_port and config.num_processes == 16
