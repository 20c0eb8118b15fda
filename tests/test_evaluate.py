"""evaluate.py through its CLI: three sets, the tiny random Mistral as base, base + adapter and a full model at two
temperatures; answers made elsewhere (--answers); the quiz self-check (--check_quiz); refused arguments.

The numbers are meaningless for a random model; the tests check that they are the right numbers: the loss of the
reference answers, answers in the exact format and of the length the data asks for, every result aggregated from
the answers written beside it, quiz rows whose answers are not in their article left out, files written.
"""

import io
import json
import math
from contextlib import redirect_stderr, redirect_stdout
from types import SimpleNamespace

import pytest
import torch
from conftest import PYTHON, REPO, STOP_QUESTION, load_script, run_script

from cthulhu_sft.evaluation import aggregate, default_max_new_tokens, score_item
from cthulhu_sft.format import IGNORE_INDEX, MistralFormat
from cthulhu_sft.inference import generate, load_model
from cthulhu_sft.sets import Corpus

KNOWN = [
    {"instruction": STOP_QUESTION, "response": "ラヴクラフトが1926年に創造した。",
     "answers": ["ラヴクラフト"], "title": "クトゥルフ", "kind": "cloze"},
    {"instruction": "ルルイエはどこにありますか？", "response": "南太平洋の海底です。", "answers": ["太平洋"],
     "title": "ルルイエ", "kind": "synthesized"},
]
UNSEEN = [
    {"instruction": "ダゴンとは？", "response": "深きものどもが崇める神です。",
     "title": "ダゴン", "kind": "recitation"},
    {"instruction": "ハスターとは？", "response": "名状しがたいものです。", "title": "ハスター"},
]
QUIZ = [
    {"instruction": "『クトゥルフの呼び声』の作者は？", "response": "H・P・ラヴクラフトです。",
     "answers": ["ラヴクラフト", "ラブクラフト"], "title": "クトゥルフ", "kind": "person"},
    # Written from memory, wrongly: the article says 南太平洋, so this row is left out of the score.
    {"instruction": "ルルイエはどの海に沈んでいますか？", "response": "大西洋です。", "answers": ["大西洋"],
     "title": "ルルイエ", "kind": "place"},
    # No crawled text for this article: unchecked, and scored.
    {"instruction": "『ネクロノミコン』の著者は？", "response": "アルハザードです。", "answers": ["アルハザード"],
     "title": "ネクロノミコン", "kind": "book"},
]
SOURCE_TEXTS = [
    {"title": "クトゥルフ", "text": "クトゥルフはラヴクラフトの『クトゥルフの呼び声』に登場する。オーガスト・ダーレスが体系化した。"},
    {"title": "ルルイエ", "text": "ルルイエ（R'lyeh）は南太平洋に沈んだ都市。"},
    {"title": "ダゴン", "text": "ダゴンは深きものどもの神。"},
]
TEMPERATURES = [0.0, 0.7]
MODELS = ["base", "tuned", "stopper"]
SETS = {"known": KNOWN, "unseen": UNSEEN, "quiz": QUIZ}
RESULT_FIELDS = {
    "set", "model", "book", "temperature", "n", "accuracy", "accuracy_ci", "incorrect_rate", "not_attempted_rate",
    "accuracy_given_attempted", "empty", "empty_rate", "rouge_l_f1", "fact_recall", "hallucination_rate",
    "unsupported_term_rate", "abstention_rate", "non_japanese_rate", "eos_stop_rate", "truncated_rate",
    "judge_accuracy", "judge_agreement", "citation_accuracy", "citation_rate", "passages_hold_answer_rate",
    "abstention_when_absent", "abstention_when_present", "closed_share_of_open",
}
OPEN_BOOK_FIELDS = {"citation_accuracy", "citation_rate", "passages_hold_answer_rate", "abstention_when_absent",
                    "abstention_when_present", "closed_share_of_open"}
GENERATION_FIELDS = {"set", "model", "book", "temperature", "instruction", "answer", "grade", "correct", "empty", "abstained",
                     "japanese", "unsupported_terms", "hallucinated", "truncated"}
CORPUS = Corpus({source["title"]: source["text"] for source in SOURCE_TEXTS})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def write_inputs(folder) -> list[str]:
    """The three sets, the source texts and an empty page cache; returns the matching evaluate.py arguments."""
    sets = [f"{name}={write_jsonl(folder / f'{name}.jsonl', rows)}" for name, rows in SETS.items()]
    (folder / "cache").mkdir()
    return ["--sets", *sets, "--source_texts", str(write_jsonl(folder / "sources.jsonl", SOURCE_TEXTS)),
            "--cache_dir", str(folder / "cache")]


def read_outputs(report_dir) -> dict:
    return {
        "dir": report_dir,
        "report": json.loads((report_dir / "report.json").read_text(encoding="utf-8")),
        "rows": [json.loads(line) for line in (report_dir / "generations.jsonl").read_text(encoding="utf-8").splitlines()],
    }


@pytest.fixture(scope="module")
def evaluation(tiny_adapter_dir, eos_model_dir, tmp_path_factory):
    """evaluate.py's main in this process, as its command line runs it (from the repository), with what it prints;
    the command itself runs in a process of its own in test_answers_made_elsewhere_are_scored_with_the_same_measures."""
    folder = tmp_path_factory.mktemp("evaluate")
    argv = ["--models", "base", f"tuned={tiny_adapter_dir}", f"stopper={eos_model_dir}", *write_inputs(folder),
            "--temperatures", *map(str, TEMPERATURES), "--batch_size", "4", "--output_dir", str(folder / "report")]
    stdout, stderr = io.StringIO(), io.StringIO()
    script = load_script("evaluate")
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(stdout), redirect_stderr(stderr):
        patch.chdir(REPO)
        script.main(script.parse_args(argv))
    result = SimpleNamespace(stdout=stdout.getvalue(), stderr=stderr.getvalue())
    return {"result": result, **read_outputs(folder / "report")}


def own_rows(rows, set_name, model, temperature):
    return [row for row in rows if (row["set"], row["model"], row["temperature"]) == (set_name, model, temperature)]


@pytest.mark.slow
def test_results_cover_every_set_model_and_temperature(evaluation, tiny_model_dir, tiny_adapter_dir, eos_model_dir):
    report = evaluation["report"]
    assert [(m["label"], m["base_model"], m["adapter"]) for m in report["models"]] == [
        ("base", str(tiny_model_dir), None),
        ("tuned", str(tiny_model_dir), str(tiny_adapter_dir)),
        ("stopper", str(eos_model_dir), None),
    ]
    keys = [(r["set"], r["model"], r["temperature"]) for r in report["results"]]
    assert keys == [(s, m, t) for m in MODELS for s in SETS for t in TEMPERATURES]
    for result in report["results"]:
        assert set(result) == RESULT_FIELDS
        assert result["n"] == {"known": 2, "unseen": 2, "quiz": 2}[result["set"]]
        assert (result["accuracy"] is None) == (result["set"] == "unseen")  # no accepted answers there
        for key in RESULT_FIELDS - {"set", "model", "book", "temperature", "n", "accuracy_ci", "empty"}:
            assert result[key] is None or 0.0 <= result[key] <= 1.0, (key, result)


@pytest.mark.slow
def test_every_result_is_aggregated_from_the_answers_beside_it(evaluation):
    rows, report = evaluation["rows"], evaluation["report"]
    assert len(rows) == len(MODELS) * len(TEMPERATURES) * (2 + 2 + 2)
    for row in rows:
        assert GENERATION_FIELDS <= set(row)
        set_row = next(r for r in SETS[row["set"]] if r["instruction"] == row["instruction"])
        expected = score_item(set_row, row["answer"], row["stopped"], CORPUS)
        assert {key: row[key] for key in expected} == expected
    for result in report["results"]:
        own = own_rows(rows, result["set"], result["model"], result["temperature"])
        expected = aggregate(own)
        assert expected.pop("accuracy_ci") == pytest.approx(result["accuracy_ci"])
        assert expected == pytest.approx({key: result[key] for key in expected})


@pytest.mark.slow
def test_loss_is_that_of_the_reference_answers(evaluation, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    fmt = MistralFormat.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    base = evaluation["report"]["models"][0]
    for name in ("known", "unseen"):
        total_nll, total_tokens = 0.0, 0
        with torch.no_grad():
            for record in SETS[name]:  # one at a time, no padding, transformers' own loss
                example = fmt.encode_example(record["instruction"], record["response"])
                tokens = sum(label != IGNORE_INDEX for label in example.labels)
                loss = model(input_ids=torch.tensor([example.input_ids]), labels=torch.tensor([example.labels])).loss
                total_nll += float(loss) * tokens
                total_tokens += tokens
        assert base["losses"][name]["answer_tokens"] == total_tokens
        assert base["losses"][name]["loss"] == pytest.approx(total_nll / total_tokens, rel=1e-5)
        assert base["losses"][name]["perplexity"] == pytest.approx(math.exp(base["losses"][name]["loss"]))
    # The adapter changes the model, so it changes the loss.
    assert evaluation["report"]["models"][1]["losses"]["known"]["loss"] != base["losses"]["known"]["loss"]


@pytest.mark.slow
def test_answers_are_generated_in_the_training_format_at_the_datas_length(evaluation, tiny_adapter_dir):
    fmt = MistralFormat.from_pretrained(str(tiny_adapter_dir))
    tuned = evaluation["report"]["models"][1]
    for name in ("known", "unseen"):
        assert tuned["max_new_tokens"][name] == default_max_new_tokens(SETS[name], fmt)
    model = load_model(None, str(tiny_adapter_dir))
    expected = generate(model, fmt, [[{"role": "user", "content": r["instruction"]}] for r in UNSEEN],
                        temperature=0, max_new_tokens=tuned["max_new_tokens"]["unseen"])
    rows = own_rows(evaluation["rows"], "unseen", "tuned", 0.0)
    assert [row["instruction"] for row in rows] == [r["instruction"] for r in UNSEEN]
    assert [row["answer"] for row in rows] == [answer.text for answer in expected]
    for row in evaluation["rows"]:  # the random model never stops: every answer runs to the limit
        limit = next(m for m in evaluation["report"]["models"] if m["label"] == row["model"])["max_new_tokens"][row["set"]]
        assert row["truncated"] is (not row["stopped"])
        assert row["new_tokens"] == limit or row["stopped"]


@pytest.mark.slow
def test_eos_stop_rate_counts_answers_that_end_with_eos(evaluation):
    stopper = own_rows(evaluation["rows"], "known", "stopper", 0.0)
    assert stopper[0]["instruction"] == STOP_QUESTION and stopper[0]["stopped"] and not stopper[0]["truncated"]
    assert stopper[0]["new_tokens"] == 3  # two tokens and </s>
    [result] = [r for r in evaluation["report"]["results"] if (r["set"], r["model"], r["temperature"]) == ("known", "stopper", 0.0)]
    assert result["eos_stop_rate"] == pytest.approx(sum(row["stopped"] for row in stopper) / 2)
    assert result["truncated_rate"] == pytest.approx(1 - result["eos_stop_rate"])
    base = [r for r in evaluation["report"]["results"] if r["model"] == "base"]
    assert all(r["eos_stop_rate"] == 0.0 and r["truncated_rate"] == 1.0 for r in base)  # the random model never stops


@pytest.mark.slow
def test_quiz_rows_not_in_their_article_are_left_out_and_counted(evaluation):
    quiz = evaluation["report"]["sets"]["quiz"]
    assert quiz["rows"] == 3 and quiz["scored"] == 2 and quiz["unchecked"] == 1 and quiz["with_text"] == 2
    assert quiz["excluded"] == [{"line": 2, "instruction": QUIZ[1]["instruction"], "answers": ["大西洋"], "title": "ルルイエ"}]
    assert not any(row["instruction"] == QUIZ[1]["instruction"] for row in evaluation["rows"])
    assert evaluation["report"]["sets"]["known"]["excluded"] == []  # its answers are in the articles


@pytest.mark.slow
def test_markdown_has_a_table_per_set_and_the_chart_a_panel_per_set(evaluation):
    markdown = (evaluation["dir"] / "report.md").read_text(encoding="utf-8")
    sections = markdown.split("\n## ")[1:]
    assert [section.splitlines()[0] for section in sections] == list(SETS)
    for section in sections:
        for label in MODELS:
            assert sum(line.startswith(f"| {label} |") for line in section.splitlines()) == len(TEMPERATURES)
    assert "1 left out of the score" in sections[2] and "1 with accepted answers unchecked" in sections[2]
    assert markdown in evaluation["result"].stdout
    png = (evaluation["dir"] / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert "evaluating" in evaluation["result"].stderr  # the progress bar
    assert not list(evaluation["dir"].glob(".*.tmp"))


@pytest.mark.slow
def test_answers_made_elsewhere_are_scored_with_the_same_measures(tmp_path):
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"set": "quiz", "instruction": QUIZ[0]["instruction"], "answer": "ラブクラフトが書きました。"},
        {"set": "quiz", "instruction": QUIZ[2]["instruction"], "answer": "わかりません。"},
        {"set": "known", "instruction": KNOWN[1]["instruction"], "answer": "南極の氷の下にあります。"},
        {"set": "unseen", "instruction": UNSEEN[0]["instruction"], "answer": "Dagon is a deity worshipped by the Deep Ones."},
        {"set": "other", "instruction": "何か？", "answer": "x"},
        {"set": "quiz", "instruction": "この質問はクイズにない？", "answer": "y"},  # a stray line: left out, named
    ])
    result = run_script([PYTHON, "evaluate.py", *write_inputs(tmp_path), "--answers", str(answers),
                         "--label", "gpt", "--output_dir", str(tmp_path / "report")])
    assert result.returncode == 0, result.stderr
    outputs = read_outputs(tmp_path / "report")
    results = {r["set"]: r for r in outputs["report"]["results"]}
    assert all(set(r) == RESULT_FIELDS and r["model"] == "gpt" and r["temperature"] is None for r in results.values())
    assert results["quiz"]["n"] == 2 and results["quiz"]["accuracy"] == 0.5 and results["quiz"]["abstention_rate"] == 0.5
    assert results["known"]["n"] == 1 and results["known"]["hallucination_rate"] == 1.0
    assert results["unseen"]["non_japanese_rate"] == 1.0 and results["unseen"]["hallucination_rate"] == 0.0
    assert all(r["eos_stop_rate"] is None and r["truncated_rate"] is None for r in results.values())
    assert all(r["book"] == "closed" and all(r[key] is None for key in OPEN_BOOK_FIELDS) for r in results.values())
    rows = {row["instruction"]: row for row in outputs["rows"]}
    assert rows[KNOWN[1]["instruction"]]["unsupported_terms"] == ["南極"]
    assert rows[QUIZ[0]["instruction"]]["correct"] is True and rows[QUIZ[2]["instruction"]]["abstained"] is True
    assert outputs["report"]["models"] == [{"label": "gpt", "answers_file": str(answers), "unmatched": 1,
                                            "unanswered": {"known": 1, "unseen": 1, "quiz": 0}}]
    assert f"{answers}:6: field 'instruction': not a question of set 'quiz'; left out" in result.stderr
    assert "1 of 2 questions of set 'known' have no answer" in result.stderr
    assert "1 answers to set 'other', which is not evaluated, are ignored" in result.stderr
    assert "| gpt | closed | – | 2 |" in (tmp_path / "report/report.md").read_text(encoding="utf-8")


def test_check_quiz_lists_rows_whose_answers_are_not_in_their_article(tmp_path, capsys):
    script = load_script("evaluate")
    with pytest.raises(SystemExit) as exit_info:
        script.main(script.parse_args(["--check_quiz", *write_inputs(tmp_path)]))
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    quiz = tmp_path / "quiz.jsonl"
    assert (f"quiz ({quiz}): 3 rows with accepted answers, 2 checked against their article's text, 1 not found "
            "there, 1 unchecked (no text: 0 named by another crawled article, 1 not taught by this data)") in out
    assert f"  {quiz}:2: {QUIZ[1]['instruction']} — none of ['大西洋'] is in the article 'ルルイエ'" in out
    good = write_jsonl(tmp_path / "good.jsonl", [QUIZ[0], QUIZ[2]])
    with pytest.raises(SystemExit) as exit_info:
        script.main(script.parse_args(["--check_quiz", "--sets", f"quiz={good}", "--source_texts",
                                       str(tmp_path / "sources.jsonl"), "--cache_dir", str(tmp_path / "cache")]))
    assert exit_info.value.code == 0
    assert "0 not found there" in capsys.readouterr().out


def test_check_quiz_reads_the_crawl_cache(tmp_path, capsys):
    from cthulhu_sft.wiki import Cache

    Cache(tmp_path / "cache" / "wiki", "https://ja.wikipedia.org/w/api.php").save(  # as prepare_data.py keeps it
        "pages", "ネクロノミコン", {"title": "ネクロノミコン", "text": "著者はアブドゥル・アルハザードとされる。"})
    quiz = write_jsonl(tmp_path / "quiz.jsonl", QUIZ[2:])
    script = load_script("evaluate")
    with pytest.raises(SystemExit) as exit_info:
        script.main(script.parse_args(["--check_quiz", "--sets", f"quiz={quiz}", "--cache_dir", str(tmp_path / "cache")]))
    assert exit_info.value.code == 0
    assert "1 checked against their article's text, 0 not found there, 0 unchecked" in capsys.readouterr().out


@pytest.mark.parametrize(
    "arguments,message",
    [
        ([], "nothing to evaluate: give --models, --answers FILE or --check_quiz"),
        (["--models", "base", "--label", "x"], "--label names the system of --answers"),
        (["--models", "base", "--sets", "known=MISSING"], "MISSING: file not found"),
        (["--models", "base", "--sets", "known=KNOWN", "known=KNOWN"], "the name 'known' is given twice"),
        (["--models", "base", "--sets", "=KNOWN"], "--sets =KNOWN: expected NAME=PATH"),
        (["--models", "base", "--sets", "bad=BADSET"], "BADSET:2: field 'answers': expected a non-empty list"),
        (["--models", "a=ADAPTER", "a=ADAPTER"], "names must be distinct"),
        (["--models", "base", "--answers", "ANSWERS", "--label", "base"], "names must be distinct"),
        (["--models", "./no-such-adapter"], "--models no-such-adapter ./no-such-adapter: no such folder"),
        (["--models", "base", "--temperatures", "0", "0"], "distinct and >= 0"),
        (["--models", "base", "--max_new_tokens", "0"], "--max_new_tokens must be >= 1"),
        (["--models", "base", "--limit", "0"], "--limit >= 1"),
        (["--models", "base", "--source_texts", "BADSOURCES"], "BADSOURCES:2: field 'title': missing or not a string"),
        (["--models", "base", "--cache_dir", "MISSING"], "--cache_dir MISSING: no such folder"),
        (["--models", "base", "--open_book", "--source_texts", ""], "--open_book retrieves from the crawled articles"),
        (["--models", "base", "--open_book", "--top_k", "0"], "--top_k must be at least 1, got 0"),
        (["--answers", "OPENED"], "OPENED:2: field 'book': an open-book answer needs --open_book"),
        (["--answers", "OPENED", "--open_book", "--source_texts", "SOURCES"],
         "open-book --answers: the prompt's passages are cut to fit the tokenizer of mistralai/Mistral-7B-Instruct-v0.2"),
        (["--answers", "AJAR", "--open_book"], "AJAR:1: field 'book': expected 'closed' or 'open', got \"ajar\""),
    ],
)
def test_bad_arguments_are_refused_before_any_model_loads(arguments, message, tiny_adapter_dir, tmp_path, capsys):
    replacements = {
        "MISSING": str(tmp_path / "missing.jsonl"), "ADAPTER": str(tiny_adapter_dir),
        "KNOWN": str(write_jsonl(tmp_path / "known.jsonl", KNOWN)),
        "BADSET": str(write_jsonl(tmp_path / "bad.jsonl", [KNOWN[0], {**KNOWN[1], "answers": "太平洋"}])),
        "BADSOURCES": str(write_jsonl(tmp_path / "sources.jsonl", [SOURCE_TEXTS[0], {"text": "x"}])),
        "ANSWERS": str(write_jsonl(tmp_path / "ok_answers.jsonl", [{"set": "known", "instruction": STOP_QUESTION, "answer": ""}])),
        "SOURCES": str(write_jsonl(tmp_path / "good_sources.jsonl", SOURCE_TEXTS)),
        "OPENED": str(write_jsonl(tmp_path / "open_answers.jsonl", [
            {"set": "known", "instruction": STOP_QUESTION, "answer": "x"},
            {"set": "known", "instruction": STOP_QUESTION, "answer": "x", "book": "open"}])),
        "AJAR": str(write_jsonl(tmp_path / "bad_book.jsonl", [
            {"set": "known", "instruction": STOP_QUESTION, "answer": "x", "book": "ajar"}])),
    }
    script = load_script("evaluate")
    argv = [replacements.get(argument, argument) for argument in arguments]
    argv = [argument.replace("=KNOWN", "=" + replacements["KNOWN"]).replace("=BADSET", "=" + replacements["BADSET"])
            .replace("=MISSING", "=" + replacements["MISSING"]) for argument in argv]
    if "--sets" not in argv:
        argv += ["--sets", f"known={replacements['KNOWN']}"]
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    for key, value in replacements.items():
        message = message.replace(key, value)
    assert message in err


def test_default_sets_are_those_that_exist(tmp_path, monkeypatch, capsys):
    script = load_script("evaluate")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--models", "base"])
    assert exit_info.value.code == 2
    assert "none of the default sets exists" in capsys.readouterr().err
    (tmp_path / "data/quiz").mkdir(parents=True)
    write_jsonl(tmp_path / "data/eval.jsonl", UNSEEN)
    write_jsonl(tmp_path / "data/quiz/cthulhu_quiz_ja.jsonl", QUIZ)
    write_jsonl(tmp_path / "data/source_texts.jsonl", SOURCE_TEXTS)
    plan = script.parse_args(["--models", "base"])
    assert {evaluated.name: evaluated.path for evaluated in plan.sets} == {
        "unseen": "data/eval.jsonl", "quiz": "data/quiz/cthulhu_quiz_ja.jsonl"}
    assert plan.missing_sets == {"known": "data/eval_known.jsonl"}
    assert plan.source_texts == "data/source_texts.jsonl" and plan.cache_dir is None
    quiz = next(evaluated for evaluated in plan.sets if evaluated.name == "quiz")
    assert [row["line"] for row in quiz.scored] == [1, 3]  # its second row's answer is not in data/source_texts.jsonl


def test_limit_takes_the_first_rows_of_each_set(tmp_path):
    script = load_script("evaluate")
    plan = script.parse_args(["--models", "base", *write_inputs(tmp_path), "--limit", "1"])
    assert {evaluated.name: len(evaluated.rows) for evaluated in plan.sets} == {"known": 1, "unseen": 1, "quiz": 1}
    assert plan.sets[0].rows[0]["instruction"] == STOP_QUESTION


def test_model_and_set_specs():
    script = load_script("evaluate")
    assert script.parse_model_spec("base") == script.ModelSpec("base", None)
    assert script.parse_model_spec("before=base") == script.ModelSpec("before", None)
    assert script.parse_model_spec("output/run-1/") == script.ModelSpec("run-1", "output/run-1/")
    assert script.parse_model_spec("r16=user/cthulhu-lora") == script.ModelSpec("r16", "user/cthulhu-lora")
    assert script.parse_set_spec("quiz=data/quiz/cthulhu_quiz_ja.jsonl") == ("quiz", "data/quiz/cthulhu_quiz_ja.jsonl")
    assert script.parse_set_spec("data/eval_known.jsonl") == ("eval_known", "data/eval_known.jsonl")


def test_a_set_without_answers_is_still_reported(tmp_path, capsys):
    """In-process, no model: --answers that cover one set only leave the others at n 0, every measure null."""
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"set": "quiz", "instruction": QUIZ[0]["instruction"],
                                                        "answer": "ラヴクラフトです。"}])
    script = load_script("evaluate")
    script.main(script.parse_args([*write_inputs(tmp_path), "--answers", str(answers), "--output_dir", str(tmp_path / "out")]))
    report = json.loads((tmp_path / "out/report.json").read_text(encoding="utf-8"))
    results = {r["set"]: r for r in report["results"]}
    assert list(results) == list(SETS) and {r["model"] for r in results.values()} == {"answers"}  # the file's name
    assert results["quiz"]["n"] == 1 and results["quiz"]["accuracy"] == 1.0
    assert results["known"]["n"] == 0 and results["known"]["empty"] == 0
    assert all(results["known"][key] is None for key in RESULT_FIELDS - {"set", "model", "book", "n", "empty"})
    assert "| answers | closed | – | 0 |" in capsys.readouterr().out


def test_the_default_run_names_the_sets_it_scored_and_those_it_could_not_find(tmp_path, monkeypatch, capsys):
    """Before a crawl only the shipped quiz exists: the run says so instead of silently scoring the quiz alone."""
    script = load_script("evaluate")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/quiz").mkdir(parents=True)
    write_jsonl(tmp_path / "data/quiz/cthulhu_quiz_ja.jsonl", QUIZ)
    answers = write_jsonl(tmp_path / "answers.jsonl", [{"set": "quiz", "instruction": QUIZ[0]["instruction"],
                                                        "answer": "ラヴクラフトです。"}])
    script.main(script.parse_args(["--answers", str(answers)]))
    err = capsys.readouterr().err
    assert "Scoring: quiz (data/quiz/cthulhu_quiz_ja.jsonl, 3 questions)" in err
    assert "Not found, so not scored: known (data/eval_known.jsonl), unseen (data/eval.jsonl)" in err
    markdown = (tmp_path / "output/eval/report.md").read_text(encoding="utf-8")
    assert "Not found, so not scored: known (`data/eval_known.jsonl`), unseen (`data/eval.jsonl`)" in markdown
    assert json.loads((tmp_path / "output/eval/report.json").read_text())["missing_sets"] == {
        "known": "data/eval_known.jsonl", "unseen": "data/eval.jsonl"}


# Open book: its own small sets, each question's article in SOURCE_TEXTS or (ハスター) not crawled at all.
OPEN_SETS = {
    "known": [KNOWN[1]],  # ルルイエ: 太平洋, which its article states
    "quiz": [QUIZ[0]],  # クトゥルフ: ラヴクラフト, which its article states
    "unseen": [{"instruction": "ハスターの異名は？", "response": "名状しがたいものです。", "answers": ["名状しがたいもの"],
                "title": "ハスター"}],  # a never-trained article the retriever does not hold: NOT_FOUND is right
}


def write_open_inputs(folder) -> list[str]:
    sets = [f"{name}={write_jsonl(folder / f'{name}.jsonl', rows)}" for name, rows in OPEN_SETS.items()]
    (folder / "cache").mkdir()
    return ["--sets", *sets, "--source_texts", str(write_jsonl(folder / "sources.jsonl", SOURCE_TEXTS)),
            "--cache_dir", str(folder / "cache"), "--open_book"]


def test_open_book_answers_made_elsewhere_are_graded_beside_closed_book(tmp_path, tiny_model_dir, capsys):
    """--answers with "book": "open" lines: graded as the closed-book ones are, their citations checked against the
    passages the retriever shows ([1] is the question's own article here, the only passage that shares a word)."""
    from cthulhu_sft.retrieval import NOT_FOUND

    ask = lambda name, answer, book="closed": {"set": name, "instruction": OPEN_SETS[name][0]["instruction"],  # noqa: E731
                                               "answer": answer, "book": book}
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        ask("known", "南太平洋です。"), ask("known", "南太平洋の海底です[2]。", "open"),  # cites a passage not shown
        ask("quiz", "わかりません。"), ask("quiz", "ラヴクラフトです[1]。", "open"),
        ask("unseen", "ハスターは黄衣の王です。"), ask("unseen", NOT_FOUND, "open"),
    ])
    script = load_script("evaluate")
    script.main(script.parse_args([*write_open_inputs(tmp_path), "--answers", str(answers), "--label", "gpt",
                                   "--base_model", str(tiny_model_dir), "--output_dir", str(tmp_path / "out")]))
    err = capsys.readouterr().err
    outputs = read_outputs(tmp_path / "out")
    results = {(r["set"], r["book"]): r for r in outputs["report"]["results"]}
    assert list(results) == [(name, book) for book in ("closed", "open") for name in OPEN_SETS]
    assert all(set(r) == RESULT_FIELDS for r in results.values())
    known, quiz, unseen = (results[(name, "open")] for name in OPEN_SETS)
    assert results[("known", "closed")]["accuracy"] == known["accuracy"] == 1.0
    assert known["closed_share_of_open"] == 1.0 and known["citation_accuracy"] == 0.0  # right, but cites nothing shown
    assert known["citation_rate"] == 0.0 and known["passages_hold_answer_rate"] == 1.0
    assert results[("quiz", "closed")]["accuracy"] == 0.0 and quiz["accuracy"] == 1.0
    assert quiz["closed_share_of_open"] == 0.0 and quiz["citation_accuracy"] == 1.0 and quiz["citation_rate"] == 1.0
    assert unseen["passages_hold_answer_rate"] == 0.0 and unseen["abstention_when_absent"] == 1.0
    assert unseen["abstention_when_present"] is None and unseen["not_attempted_rate"] == 1.0
    assert unseen["closed_share_of_open"] is None  # no open-book accuracy to be a share of
    assert all(results[(name, "closed")][key] is None for name in OPEN_SETS for key in OPEN_BOOK_FIELDS)
    rows = {(row["set"], row["book"]): row for row in outputs["rows"]}
    assert rows[("quiz", "open")]["sources"] == [{"title": "クトゥルフ", "section": "", "revid": None}]
    assert rows[("quiz", "open")]["cited"] == [1] and rows[("known", "open")]["cited"] == [2]
    assert rows[("unseen", "open")]["sources"] == [] and rows[("unseen", "open")]["grade"] == "not_attempted"
    assert "sources" not in rows[("quiz", "closed")]
    # the sets' retrieval recall, printed first and in the report
    assert "Retrieval, known: the question's own article among the top k passages: recall@1 1.000, recall@3 1.000, " \
           "recall@5 1.000 (1 questions)" in err
    assert "recall@3 0.000" in err.split("Retrieval, unseen")[1].splitlines()[0]
    assert outputs["report"]["sets"]["quiz"]["retrieval"] == {"questions": 1, "recall@1": 1.0, "recall@3": 1.0,
                                                             "recall@5": 1.0}
    assert outputs["report"]["config"]["open_book"] is True and outputs["report"]["config"]["top_k"] == 3
    markdown = (tmp_path / "out/report.md").read_text(encoding="utf-8")
    assert "| gpt | open | – | 1 |" in markdown and "| gpt | closed | – | 1 |" in markdown
    assert "closed / open ↑" in markdown and "the closed-book accuracy as a share of the open-book accuracy" in markdown


@pytest.mark.slow
def test_open_book_run_asks_every_question_both_ways_in_the_exact_format(tmp_path, tiny_model_dir, capsys):
    """The tiny model, in-process: each question closed-book and then with its passages, the prompts being
    retrieval.open_book_prompt's user turn (so the answers are generate()'s on them), every open-book measure
    aggregated from the answers written beside it."""
    from cthulhu_sft.evaluation import OpenBook, score_open_book
    from cthulhu_sft.retrieval import open_retriever

    script = load_script("evaluate")
    script.main(script.parse_args(["--models", "base", "--base_model", str(tiny_model_dir), *write_open_inputs(tmp_path),
                                   "--temperatures", "0", "--max_new_tokens", "6", "--batch_size", "2",
                                   "--output_dir", str(tmp_path / "out")]))
    assert "Retrieval, quiz: the question's own article among the top k passages: recall@1 1.000" in capsys.readouterr().err
    outputs = read_outputs(tmp_path / "out")
    assert [(r["set"], r["book"]) for r in outputs["report"]["results"]] == [
        (name, book) for name in OPEN_SETS for book in ("closed", "open")]
    fmt = MistralFormat.from_pretrained(str(tiny_model_dir))
    model = load_model(str(tiny_model_dir), None)
    open_book = OpenBook(open_retriever(tmp_path / "sources.jsonl"))
    corpus = Corpus({source["title"]: source["text"] for source in SOURCE_TEXTS})
    for name, set_rows in OPEN_SETS.items():
        prompts = open_book.prompts(set_rows, fmt)
        expected = generate(model, fmt, [[{"role": "user", "content": turn}] for turn, _ in prompts], temperature=0,
                            max_new_tokens=6)
        rows = [row for row in outputs["rows"] if (row["set"], row["book"]) == (name, "open")]
        assert [row["answer"] for row in rows] == [answer.text for answer in expected]
        assert rows[0]["sources"] == [{"title": hit.title, "section": hit.section, "revid": hit.revid} for hit in prompts[0][1]]
        scores = score_open_book(set_rows[0], rows[0]["answer"], rows[0]["stopped"], prompts[0][1], corpus)
        assert {key: rows[0][key] for key in scores} == scores
        [result] = [r for r in outputs["report"]["results"] if (r["set"], r["book"]) == (name, "open")]
        expected_result = aggregate(rows)
        expected_result.pop("accuracy_ci")
        expected_result.pop("closed_share_of_open")
        assert expected_result == pytest.approx({key: result[key] for key in expected_result})
    assert "ルルイエ（R'lyeh）は南太平洋に沈んだ都市。" in open_book.prompts(OPEN_SETS["known"], fmt)[0][0]
