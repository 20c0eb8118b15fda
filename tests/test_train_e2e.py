"""train_sft.py end to end through `accelerate launch` on the CPU: 8-bit tiny Mistral + LoRA, the real code path."""

import json
import os
import signal
import socket
import stat
import subprocess
import time

import pytest
from conftest import REPO, run_script
from hub_server import RefusingHub

from cthulhu_sft.inference import DEFAULT_REPETITION_PENALTY

pytestmark = pytest.mark.slow

QA = [
    {"instruction": "ルルイエはどこにありますか？", "response": "南太平洋の海底に沈んでいます。",
     "title": "ルルイエ", "source": "https://ja.wikipedia.org/wiki/ルルイエ", "revid": 101},
    {"instruction": "ネクロノミコンの著者は？", "response": "アブドゥル・アルハザードです。",
     "title": "ネクロノミコン", "source": "https://ja.wikipedia.org/wiki/ネクロノミコン", "revid": 202},
    {"instruction": "Who created Cthulhu?", "response": "H. P. Lovecraft.",
     "title": "クトゥルフ", "source": "https://ja.wikipedia.org/wiki/クトゥルフ", "revid": 303},
]
SECRET = "hf_TESTSECRETtoken0123456789abcdef"
ACCELERATE = os.path.join(os.path.dirname(os.sys.executable), "accelerate")


def write_data(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("train.jsonl", "eval.jsonl"):
        (folder / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in QA), encoding="utf-8")
    return folder / "train.jsonl", folder / "eval.jsonl"


def launch_args(model_dir, data_dir, output_dir, *extra):
    train, evaluation = write_data(data_dir)
    return [
        ACCELERATE, "launch", "--config_file", "accelerate_config.yaml", "--cpu", "train_sft.py",
        "--config", "sft_config.yaml", "--bf16", "false", "--dtype", "float32",
        "--model_name_or_path", str(model_dir), "--train_file", str(train), "--eval_file", str(evaluation),
        "--output_dir", str(output_dir), "--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "1",
        "--report_to", "none", *map(str, extra),
    ]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A run that memorises three answers, then tries to push to a Hub that refuses everything."""
    root = tmp_path_factory.mktemp("trained")
    hub = RefusingHub(status=500)
    args = launch_args(
        tiny_model_dir, root / "data", root / "out",
        "--max_steps", 80, "--learning_rate", "1e-2", "--lora_dropout", 0, "--warmup_steps", 0,
        "--lr_scheduler_type", "constant", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", 40,
        "--logging_steps", 20, "--sample_temperature", 0, "--sample_max_new_tokens", 24,
        "--sample_prompts", QA[0]["instruction"], QA[2]["instruction"],
        "--base_model_hub_id", "mistralai/Mistral-7B-Instruct-v0.2",
        "--push_to_hub", "--hub_model_id", "someone/cthulhu-test",
    )
    result = run_script(args, env={"HF_ENDPOINT": hub.url, "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "0"})
    hub.close()
    return result, root / "out", hub


def test_failed_push_is_reported_and_exits_nonzero(trained):
    result, _, hub = trained
    assert result.returncode == 1, result.stderr[-3000:]
    assert "push to the Hub (someone/cthulhu-test) failed" in result.stderr
    assert hub.requests, "the push must have reached the (refusing) Hub endpoint"


def test_failed_push_keeps_a_complete_output_dir(trained):
    _, out, _ = trained
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer.model",
                 "tokenizer_config.json", "README.md", "run.json", "config.yaml", "samples.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "checkpoint-40").is_dir() and (out / "checkpoint-80").is_dir()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished"


def test_token_never_appears_in_output_logs_or_files(trained):
    result, out, _ = trained
    assert SECRET not in result.stdout + result.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_run_manifest_traces_data_config_and_versions(trained):
    _, out, _ = trained
    from cthulhu_sft.files import sha256_file

    run = json.loads((out / "run.json").read_text())
    train = run["data"]["train"]
    assert train["sha256"] == sha256_file(train["path"])
    assert (train["examples"], train["kept"], train["dropped_too_long"]) == (3, 3, 0)
    assert set(run["versions"]) >= {"torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate"}
    assert run["config"]["learning_rate"] == 0.01 and run["config"]["lora_r"] == 16
    assert "hub_token" not in run["config"]
    assert run["config"]["eos_token"] is None and run["config"]["pad_token"] is None  # not to_dict's "<EOS_TOKEN>"
    assert run["base_model_local"] is True
    assert run["start_time"] <= run["end_time"]
    assert "train_loss" in run["metrics"] and "eval_loss" in run["metrics"]
    assert run["git_commit"] is None or len(run["git_commit"]) >= 40


def test_saved_config_reproduces_the_run_settings(trained):
    _, out, _ = trained
    from cthulhu_sft.config import parse_args

    script_args, training_args, model_args = parse_args(["--config", str(out / "config.yaml"), "--bf16", "false"])
    assert training_args.eos_token is None and training_args.pad_token is None
    assert training_args.learning_rate == 0.01 and training_args.max_steps == 80 and model_args.lora_r == 16
    assert script_args.base_model_hub_id == "mistralai/Mistral-7B-Instruct-v0.2"


def test_outputs_are_readable_as_the_umask_allows(trained):
    """Atomic writes go through mkstemp, which makes files private; the outputs must not stay so."""
    _, out, _ = trained
    umask = os.umask(0o022)
    os.umask(umask)
    if 0o666 & ~umask == 0o600:
        pytest.skip("under this umask new files are private anyway, as mkstemp makes them")
    for name in ("run.json", "config.yaml", "README.md", "samples.jsonl"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


def test_model_card_replaces_peft_readme_with_metadata_and_attribution(trained):
    _, out, _ = trained
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "mistralai/Mistral-7B-Instruct-v0.2"
    assert card.data.library_name == "peft" and card.data.license == "cc-by-sa-4.0"
    assert card.data.datasets == ["wikimedia/wikipedia"]
    assert "CC BY-SA 4.0" in card.text and "https://ja.wikipedia.org/wiki/ルルイエ" in card.text
    assert "revision 101" in card.text and "run.json" in card.text
    run = json.loads((out / "run.json").read_text())
    assert f"{run['metrics']['eval_loss']:.4f}" in card.text
    # the snippet decodes as the run's samples did (greedy: --sample_temperature 0)
    assert f"max_new_tokens=24, do_sample=False, repetition_penalty={DEFAULT_REPETITION_PENALTY})" in card.text


def test_it_learns_and_stops_at_eos(trained):
    _, out, _ = trained
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples == [
        {"prompt": QA[0]["instruction"], "answer": QA[0]["response"], "ended_with_eos": True},
        {"prompt": QA[2]["instruction"], "answer": QA[2]["response"], "ended_with_eos": True},
    ]


def test_saved_adapter_loads_with_peft_and_generates_the_trained_answer(trained, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out, _ = trained
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": QA[1]["instruction"]}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    new_tokens = output[0, prompt["input_ids"].shape[1]:].tolist()
    assert new_tokens[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip() == QA[1]["response"]


def test_resume_continues_at_the_saved_step(tiny_model_dir, tmp_path):
    """A run killed after a checkpoint resumes from it: the steps before it are not trained again."""
    out = tmp_path / "out"
    args = launch_args(tiny_model_dir, tmp_path / "data", out, "--eval_strategy", "no", "--save_strategy", "steps",
                       "--save_steps", 3, "--logging_steps", 1, "--sample_prompts", "x", "--sample_max_new_tokens", 2)
    process = subprocess.Popen([*args, "--max_steps", "100000"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.time() + 240
    while not list(out.glob("checkpoint-*/trainer_state.json")) and time.time() < deadline:
        time.sleep(0.5)
    time.sleep(1)  # let the checkpoint being written finish
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    saved = sorted(int(path.parent.name.split("-")[1]) for path in out.glob("checkpoint-*/trainer_state.json"))
    assert saved, "no checkpoint was written before the deadline"
    step = saved[-1]
    assert not (out / "adapter_model.safetensors").exists(), "the run was meant to be interrupted"

    result = run_script([*args, "--max_steps", str(step + 3), "--resume_from_checkpoint", "true"])
    assert result.returncode == 0, result.stderr[-3000:]
    state = json.loads((out / f"checkpoint-{step + 3}" / "trainer_state.json").read_text())
    assert state["global_step"] == step + 3
    logged_steps = [entry["step"] for entry in state["log_history"] if "loss" in entry]
    assert logged_steps == list(range(1, step + 4)), "each step trained exactly once across the two runs"
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished" and run["resumed_from"] == str(out / f"checkpoint-{step}")


def test_push_with_hub_down_keeps_outputs_and_leaks_no_token(tiny_model_dir, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{probe.getsockname()[1]}"
    out = tmp_path / "out"
    args = launch_args(tiny_model_dir, tmp_path / "data", out, "--max_steps", 1, "--eval_strategy", "no",
                       "--save_strategy", "no", "--sample_prompts", "x", "--sample_max_new_tokens", 2,
                       "--push_to_hub", "--hub_model_id", "someone/down",
                       "--base_model_hub_id", "mistralai/Mistral-7B-Instruct-v0.2")
    result = run_script(args, env={"HF_ENDPOINT": dead_url, "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "0",
                                   "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"})
    assert result.returncode == 1
    assert "push to the Hub (someone/down) failed" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_push_can_be_retried_alone_and_fails_plainly(trained, tmp_path):
    _, out, _ = trained
    from conftest import PYTHON

    hub = RefusingHub(status=403)
    result = run_script([PYTHON, "-m", "cthulhu_sft.hub", str(out), "someone/again"],
                        env={"HF_ENDPOINT": hub.url, "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "0"})
    hub.close()
    assert result.returncode == 1
    assert "push to the Hub (someone/again) failed" in result.stderr
    assert SECRET not in result.stdout + result.stderr
    assert any(headers.get("authorization") == f"Bearer {SECRET}" or headers.get("Authorization") == f"Bearer {SECRET}"
               for _, _, headers in hub.requests), "the token is sent to the Hub, and only there"
    not_a_run = run_script([PYTHON, "-m", "cthulhu_sft.hub", str(tmp_path), "someone/again"])
    assert not_a_run.returncode == 2 and "holds no trained adapter" in not_a_run.stderr
