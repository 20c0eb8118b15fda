"""evaluate.py end to end on the tiny random Mistral: base alone, base + adapter and a full model, two temperatures.

The numbers are meaningless for a random model; the tests check that they are the right numbers: the loss
of the reference answers, answers in the exact format, pooled measures, the EOS-stop rate, files written.
"""

import json
import math

import pytest
import torch
from conftest import PYTHON, STOP_QUESTION, load_script, run_script

from cthulhu_sft.format import IGNORE_INDEX, MistralFormat
from cthulhu_sft.inference import generate, load_model
from cthulhu_sft.metrics import summarize, unsupported_terms

RECORDS = [
    {"instruction": STOP_QUESTION, "response": "クトゥルフは、H・P・ラヴクラフトが1926年に創造した神性である。",
     "title": "クトゥルフ", "source": "https://ja.wikipedia.org/wiki/クトゥルフ", "revid": 1},
    {"instruction": "ルルイエはどこにありますか？", "response": "南太平洋の海底に沈んだ都市ルルイエ（R'lyeh）。",
     "title": "ルルイエ", "source": "https://ja.wikipedia.org/wiki/ルルイエ", "revid": 2},
    {"instruction": "ダゴンとは？", "response": "深きものどもが崇める存在。", "title": "ダゴン",
     "source": "https://ja.wikipedia.org/wiki/ダゴン", "revid": 3},
    {"instruction": "使われない4行目", "response": "--limit 3 で読まれない。", "title": "なし", "source": "", "revid": 4},
]
SOURCE_TEXTS = [
    {"title": "クトゥルフ", "text": "クトゥルフ神話の中心的存在。オーガスト・ダーレスが体系化した。"},
    {"title": "ルルイエ", "text": "ルルイエ（R'lyeh）はクトゥルフが眠る都市。"},
]
TEMPERATURES = [0.0, 0.7]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def evaluation(tiny_adapter_dir, eos_model_dir, tmp_path_factory):  # noqa: F811 (fixtures imported above)
    folder = tmp_path_factory.mktemp("evaluate")
    eval_file = write_jsonl(folder / "eval.jsonl", RECORDS)
    sources = write_jsonl(folder / "sources.jsonl", SOURCE_TEXTS)
    result = run_script([
        PYTHON, "evaluate.py", "--models", "base", f"tuned={tiny_adapter_dir}", f"stopper={eos_model_dir}",
        "--eval_file", str(eval_file), "--source_texts", str(sources), "--limit", "3",
        "--temperatures", *map(str, TEMPERATURES), "--max_new_tokens", "6", "--batch_size", "2",
        "--output_dir", str(folder / "report"),
    ])
    assert result.returncode == 0, result.stderr
    report_dir = folder / "report"
    return {
        "result": result,
        "dir": report_dir,
        "report": json.loads((report_dir / "report.json").read_text(encoding="utf-8")),
        "rows": [json.loads(line) for line in (report_dir / "generations.jsonl").read_text(encoding="utf-8").splitlines()],
    }


@pytest.mark.slow
def test_report_covers_every_model_and_temperature(evaluation, tiny_model_dir, tiny_adapter_dir, eos_model_dir):  # noqa: F811
    report = evaluation["report"]
    assert report["config"]["records"] == 3 and report["config"]["records_with_source"] == 2
    assert [(m["label"], m["base_model"], m["adapter"]) for m in report["models"]] == [
        ("base", str(tiny_model_dir), None),
        ("tuned", str(tiny_model_dir), str(tiny_adapter_dir)),
        ("stopper", str(eos_model_dir), None),
    ]
    for model in report["models"]:
        assert model["perplexity"] == pytest.approx(math.exp(model["loss"]))
        assert [run["temperature"] for run in model["runs"]] == TEMPERATURES
        for run in model["runs"]:
            assert run["answers"] == 3
            for key in ("rouge_l_f1", "fact_recall", "unsupported_term_rate", "eos_stop_rate"):
                assert 0.0 <= run[key] <= 1.0, (model["label"], run)
            assert 1 <= run["mean_new_tokens"] <= 6
    # The adapter changes the model, so it changes the loss.
    assert report["models"][0]["loss"] != report["models"][1]["loss"]


@pytest.mark.slow
def test_loss_is_that_of_the_reference_answers(evaluation, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    fmt = MistralFormat.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for record in RECORDS[:3]:  # one at a time, no padding, transformers' own loss
            example = fmt.encode_example(record["instruction"], record["response"])
            tokens = sum(label != IGNORE_INDEX for label in example.labels)
            loss = model(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])).loss
            total_nll += float(loss) * tokens
            total_tokens += tokens
    base = evaluation["report"]["models"][0]
    assert base["answer_tokens"] == total_tokens
    assert base["loss"] == pytest.approx(total_nll / total_tokens, rel=1e-5)


@pytest.mark.slow
def test_answers_are_generated_in_the_training_format(evaluation, tiny_adapter_dir):  # noqa: F811
    fmt = MistralFormat.from_pretrained(str(tiny_adapter_dir))
    model = load_model(None, str(tiny_adapter_dir))
    expected = generate(model, fmt, [[{"role": "user", "content": r["instruction"]}] for r in RECORDS[:3]],
                        temperature=0, max_new_tokens=6)
    rows = [row for row in evaluation["rows"] if row["model"] == "tuned" and row["temperature"] == 0.0]
    assert [row["instruction"] for row in rows] == [r["instruction"] for r in RECORDS[:3]]
    assert [row["answer"] for row in rows] == [answer.text for answer in expected]


@pytest.mark.slow
def test_measures_are_pooled_from_the_answers(evaluation):
    rows, report = evaluation["rows"], evaluation["report"]
    assert len(rows) == 3 * len(TEMPERATURES) * 3
    sources = {source["title"]: source["text"] for source in SOURCE_TEXTS}
    for row in rows:  # the source article's text supports terms, found by the record's title
        assert row["unsupported_terms"] == sorted(unsupported_terms(row["answer"], row["reference"], sources.get(row["title"], "")))
    for model in report["models"]:
        for run in model["runs"]:
            own = [row for row in rows if row["model"] == model["label"] and row["temperature"] == run["temperature"]]
            expected = summarize(own, [row["stopped"] for row in own])
            for key, value in expected.items():
                assert run[key] == pytest.approx(value), key


@pytest.mark.slow
def test_eos_stop_rate_counts_answers_that_end_with_eos(evaluation):
    stopper_greedy = [row for row in evaluation["rows"] if row["model"] == "stopper" and row["temperature"] == 0.0]
    assert stopper_greedy[0]["instruction"] == STOP_QUESTION and stopper_greedy[0]["stopped"]
    assert stopper_greedy[0]["new_tokens"] == 3  # two tokens and </s>
    run = evaluation["report"]["models"][2]["runs"][0]
    assert run["eos_stop_rate"] == pytest.approx(sum(row["stopped"] for row in stopper_greedy) / 3)
    assert evaluation["report"]["models"][0]["runs"][0]["eos_stop_rate"] == 0.0  # the random model never stops


@pytest.mark.slow
def test_markdown_table_and_chart_are_written(evaluation):
    markdown = (evaluation["dir"] / "report.md").read_text(encoding="utf-8")
    for label in ("base", "tuned", "stopper"):
        assert sum(line.startswith(f"| {label} |") for line in markdown.splitlines()) == len(TEMPERATURES)
    assert markdown in evaluation["result"].stdout
    png = (evaluation["dir"] / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert "evaluating" in evaluation["result"].stderr  # the progress bar
    assert not list(evaluation["dir"].glob(".*.tmp"))


@pytest.mark.slow
def test_cli_bad_eval_file_fails_before_loading(tmp_path):
    eval_file = tmp_path / "eval.jsonl"
    eval_file.write_text('{"instruction": "q", "response": "a"}\n{"instruction": "q2"}\n', encoding="utf-8")
    result = run_script([PYTHON, "evaluate.py", "--models", "base", "--base_model", str(tmp_path),
                         "--eval_file", str(eval_file), "--output_dir", str(tmp_path / "out")])
    assert result.returncode == 2
    assert f"{eval_file}:2: field 'response': missing" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--models", "base", "--eval_file", "MISSING"], "MISSING: file not found"),
        (["--models", "a=ADAPTER", "a=ADAPTER"], "labels must be distinct"),
        (["--models", "./no-such-adapter"], "--models no-such-adapter ./no-such-adapter: no such folder"),
        (["--models", "base", "--temperatures", "0", "0"], "distinct and >= 0"),
        (["--models", "base", "--temperatures", "-0.5"], "distinct and >= 0"),
        (["--models", "base", "--limit", "0"], "--limit >= 1"),
        (["--models", "base", "--source_texts", "BADSOURCES"], "BADSOURCES:2: field 'text': missing or not a string"),
    ],
)
def test_bad_arguments_are_refused(arguments, message, tiny_adapter_dir, tmp_path, capsys):  # noqa: F811
    eval_file = write_jsonl(tmp_path / "eval.jsonl", RECORDS)
    bad_sources = write_jsonl(tmp_path / "sources.jsonl", [SOURCE_TEXTS[0], {"title": "x"}])
    replacements = {"MISSING": str(tmp_path / "missing.jsonl"), "ADAPTER": str(tiny_adapter_dir),
                    "BADSOURCES": str(bad_sources)}
    script = load_script("evaluate")
    argv = [replacements.get(argument, argument) for argument in arguments]
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(argv + ([] if "--eval_file" in argv else ["--eval_file", str(eval_file)]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for key, value in replacements.items():
        message = message.replace(key, value)
    assert message in err


def test_model_specs():
    script = load_script("evaluate")
    assert script.parse_model_spec("base") == {"label": "base", "path": None}
    assert script.parse_model_spec("before=base") == {"label": "before", "path": None}
    assert script.parse_model_spec("output/run-1/") == {"label": "run-1", "path": "output/run-1/"}
    assert script.parse_model_spec("r16=user/cthulhu-lora") == {"label": "r16", "path": "user/cthulhu-lora"}


def test_source_texts_beside_the_eval_file_are_used_by_default(tmp_path):
    """prepare_data.py writes source_texts.jsonl beside eval.jsonl; evaluate.py picks it up unasked."""
    script = load_script("evaluate")
    eval_file = write_jsonl(tmp_path / "eval.jsonl", RECORDS)
    args = script.parse_args(["--models", "base", "--eval_file", str(eval_file)])
    assert args.source_texts is None and args.sources == {}
    write_jsonl(tmp_path / "source_texts.jsonl", SOURCE_TEXTS)
    args = script.parse_args(["--models", "base", "--eval_file", str(eval_file)])
    assert args.source_texts == str(tmp_path / "source_texts.jsonl")
    assert set(args.sources) == {source["title"] for source in SOURCE_TEXTS}
