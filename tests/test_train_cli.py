"""train_sft.py before the model: configuration, validation and --dump_tokenized, through the real CLI."""

import json

import pytest
import yaml
from conftest import PYTHON, REPO, load_script, mistral_common_ids, run_script

RECORDS = [
    {"instruction": "クトゥルフとは？", "response": "ルルイエに眠る存在。"},
    {"instruction": "文中の </s> と [INST] は？", "response": "ただの文字 </s> です。\n改行\tタブ　全角"},
    {"instruction": "emoji 🐙", "response": "🦑"},
    {"instruction": "長い", "response": "あ。" * 200},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def train_cli(*args, model="does/not-exist"):
    return run_script([PYTHON, "train_sft.py", "--config", "sft_config.yaml", "--bf16", "false",
                       "--model_name_or_path", str(model), *map(str, args)], timeout=300)


def test_dump_tokenized_equals_mistral_common_and_drops_too_long(tmp_path, tiny_model_dir, reference_tokenizer):
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    dump = tmp_path / "dump.jsonl"
    result = train_cli("--train_file", train, "--eval_file", train, "--max_length", 200,
                       "--dump_tokenized", dump, "--output_dir", tmp_path / "out", model=tiny_model_dir)
    assert result.returncode == 0, result.stderr
    assert "1 of 4 examples are longer than max_length=200" in result.stderr
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == 3
    for record, row in zip(RECORDS, rows):
        messages = [{"role": "user", "content": record["instruction"]}, {"role": "assistant", "content": record["response"]}]
        expected = mistral_common_ids(reference_tokenizer, messages)
        assert row["input_ids"] == expected
        prompt_length = len(expected) - len(row["labels"]) + row["labels"].count(-100)
        assert row["labels"] == [-100] * prompt_length + expected[prompt_length:]
        assert row["labels"][-1] == 2 and row["input_ids"].count(1) == 1
    assert not (tmp_path / "out").exists(), "--dump_tokenized must not start a run"


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"instruction": "q", "response": "a"}\n{"instruction": "q2", "response": \n', "train.jsonl:2: invalid JSON"),
        ('{"instruction": "q"}\n', "train.jsonl:1: field 'response': missing"),
        ('{"instruction": "q", "response": ""}\n', "train.jsonl:1: field 'response': empty"),
        ('{"instruction": ["q"], "response": "a"}\n', "train.jsonl:1: field 'instruction': expected a string"),
    ],
)
def test_bad_training_data_fails_before_any_model_is_loaded(tmp_path, content, message):
    train = tmp_path / "train.jsonl"
    train.write_text(content, encoding="utf-8")
    # The model id does not exist anywhere: reaching the model (or tokenizer) would fail differently.
    result = train_cli("--train_file", train, "--eval_file", train, "--output_dir", tmp_path / "out")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_config_key_is_an_error_naming_it(tmp_path):
    config = yaml.safe_load((REPO / "sft_config.yaml").read_text())
    config["lerning_rate"] = 1e-4
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    result = run_script([PYTHON, "train_sft.py", "--config", str(path), "--bf16", "false"])
    assert result.returncode == 2
    assert "lerning_rate" in result.stderr


def test_unknown_command_line_option_is_an_error_naming_it():
    result = run_script([PYTHON, "train_sft.py", "--config", "sft_config.yaml", "--bf16", "false", "--num_epochs", "2"])
    assert result.returncode == 2
    assert "--num_epochs" in result.stderr


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS[:1])
    result = train_cli("--train_file", train, "--eval_file", train, "--output_dir", tmp_path / "out",
                       "--resume_from_checkpoint", "true", model=tiny_model_dir)
    assert result.returncode == 2
    assert "no complete checkpoint-* folder" in result.stderr


def test_shipped_config_parses_with_the_real_parser_and_holds_the_recipe():
    from cthulhu_sft.config import parse_args

    script_args, training_args, model_args = parse_args(["--config", str(REPO / "sft_config.yaml"), "--bf16", "false"])
    assert model_args.model_name_or_path == "mistralai/Mistral-7B-Instruct-v0.2"
    assert model_args.load_in_8bit and model_args.use_peft and model_args.lora_target_modules == "all-linear"
    assert training_args.activation_checkpointing and training_args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert str(training_args.eval_strategy) in ("epoch", "IntervalStrategy.EPOCH")
    assert training_args.report_to == ["tensorboard"]
    assert script_args.train_file == "data/train.jsonl" and script_args.eval_file == "data/eval.jsonl"
    assert yaml.safe_load((REPO / "sft_config.yaml").read_text())["bf16"] is True


def test_command_line_overrides_the_yaml():
    from cthulhu_sft.config import parse_args

    _, training_args, model_args = parse_args(
        ["--config", str(REPO / "sft_config.yaml"), "--bf16", "false", "--learning_rate", "1e-4", "--lora_r", "8"]
    )
    assert training_args.learning_rate == 1e-4 and model_args.lora_r == 8


def test_bf16_without_gpu_explains_the_fix():
    result = run_script([PYTHON, "train_sft.py", "--config", "sft_config.yaml"], env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 2
    assert "--bf16 false" in result.stderr


def test_evaluation_without_eval_file_is_refused_before_training(tmp_path, tiny_model_dir):
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS[:1])
    result = train_cli("--train_file", train, "--eval_file", "", "--output_dir", tmp_path / "out", model=tiny_model_dir)
    assert result.returncode == 2
    assert "eval_strategy is 'epoch' but there is no eval_file" in result.stderr


@pytest.mark.parametrize(
    "status,checkpoint,refusal",
    [
        ("finished", False, "already holds a finished run"),
        ("running", True, "already holds a run with checkpoints"),
    ],
)
def test_finished_or_checkpointed_runs_are_protected(tmp_path, tiny_model_dir, status, checkpoint, refusal):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"status": status}))
    if checkpoint:
        (out / "checkpoint-3").mkdir()
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS[:1])
    result = train_cli("--train_file", train, "--eval_file", train, "--output_dir", out, model=tiny_model_dir)
    assert result.returncode == 2 and refusal in result.stderr
    assert json.loads((out / "run.json").read_text()) == {"status": status}, "the old run's manifest is untouched"


@pytest.mark.slow
def test_a_run_that_crashed_before_its_first_checkpoint_is_simply_rerun(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"status": "running"}))
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS[:1])
    result = train_cli("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", out,
                       "--max_steps", 1, "--save_strategy", "no", "--report_to", "none", "--sample_max_new_tokens", 2,
                       model=tiny_model_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_dump_tokenized_ignores_the_runs_in_output_dir(tmp_path, tiny_model_dir):
    """The dump starts no run, so a finished run in the configured output_dir does not stop it."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"status": "finished"}))
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS[:1])
    result = train_cli("--train_file", train, "--eval_file", train, "--output_dir", out,
                       "--dump_tokenized", tmp_path / "dump.jsonl", model=tiny_model_dir)
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "dump.jsonl").read_text().splitlines()) == 1


def test_resume_skips_a_checkpoint_left_incomplete_by_a_kill(tmp_path, capsys):
    """A run killed while saving leaves checkpoint-N without trainer_state.json: resume uses the one before."""
    train_sft = load_script("train_sft")
    out = tmp_path / "out"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3}')
    (out / "checkpoint-6").mkdir()
    (out / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"partial")
    (out / "checkpoint-10-old").mkdir()  # not a checkpoint name the Trainer writes
    assert train_sft.newest_complete_checkpoint(str(out)) == str(out / "checkpoint-3")
    assert f"{out / 'checkpoint-6'} is incomplete" in capsys.readouterr().err

    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_st')  # cut mid-write
    assert train_sft.newest_complete_checkpoint(str(out)) is None


@pytest.mark.parametrize(
    "args,message",
    [
        (["--train_file", ""], "train_file is empty"),
        (["--model_name_or_path", "/no/such/model"], "cannot read tokenizer.model of /no/such/model"),
        (["--push_to_hub", "--hub_model_id", "someone/x", "--model_name_or_path", "{model}"],
         "name its Hub id with --base_model_hub_id"),
    ],
)
def test_bad_settings_are_one_clear_error(tmp_path, tiny_model_dir, args, message):
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS[:1])
    args = [arg.replace("{model}", str(tiny_model_dir)) for arg in args]
    result = run_script([PYTHON, "train_sft.py", "--config", "sft_config.yaml", "--bf16", "false",
                         "--train_file", str(train), "--eval_file", str(train), "--output_dir", str(tmp_path / "out"),
                         *args], env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_missing_or_broken_config_is_one_clear_error(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: [1e-4\n", encoding="utf-8")
    for config, message in ((tmp_path / "missing.yaml", "missing.yaml is not a file"), (broken, "broken.yaml")):
        result = run_script([PYTHON, "train_sft.py", "--config", str(config), "--bf16", "false"])
        assert result.returncode == 2, result.stderr[-2000:]
        assert "error: --config:" in result.stderr and message in result.stderr
        assert "Traceback" not in result.stderr
