"""prepare_data.py end to end against loopback MediaWiki, OpenAI-compatible and Hub servers.

The main path runs through the real CLI in a subprocess; the rest calls `prepare_data.main` in-process.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, mistral_common_ids, run_script
from hub_server import VALID_TOKEN, LoopbackHub, RefusingHub, wait_for
from mediawiki_server import MediaWikiServer, cthulhu_wiki
from openai_server import OpenAIServer, Reply, passage_writer
from test_legacy import LEGACY
from test_retrieval import shown_passages
from test_splits import open_book_question

import prepare_data
from cthulhu_sft.data import load_records
from cthulhu_sft.examples import normalize_question, split_sentences
from cthulhu_sft.format import MistralFormat
from cthulhu_sft.metrics import match_form
from cthulhu_sft.retrieval import NOT_FOUND, parse_citations, with_citation

KEY = "sk-loopback-secret-0123456789"
FIELDS = {"instruction", "response", "title", "source", "revid", "kind", "section"}
OUTPUTS = {"train.jsonl", "eval.jsonl", "eval_known.jsonl", "source_texts.jsonl", "README.md"}
ALL_ARTICLES = {"クトゥルフ", "ルルイエ", "ネクロノミコン", "ニャルラトホテプ", "ダゴン (クトゥルフ神話)", "ハスター",
                "インスマスを覆う影", "狂気の山脈にて", "ヨグ＝ソトース",
                "クトゥルフ神話TRPG: 第7版/" + "ルールブックに登場する架空の書物と神格の一覧" * 4}
# Facts every answer of the loopback writer adds: one grounded only in ルルイエ, one invented, one pointing at the text.
EXTRA = [{"evidence": "ルルイエは、太平洋の底に沈んだ", "short_answer": "太平洋の底", "answer": "ルルイエは太平洋の底に沈んだ。",
          "questions": ["{subject}はどこに沈んでいますか？", "{subject}が沈んでいる場所はどこですか？"]},
         {"evidence": "怪奇作家が創作した", "short_answer": "ラヴクラフト", "answer": "ラヴクラフトです。",
          "questions": ["{subject}を創作した作家は誰ですか？", "{subject}の作者は誰ですか？"]},
         {"evidence": "架空の神格である", "short_answer": "神格", "answer": "クトゥルフは架空の神格である。",
          "questions": ["この節で{subject}は何と呼ばれていますか？", "{subject}は何ですか？"]}]


@pytest.fixture(scope="session")
def fmt(tokenizer_dir) -> MistralFormat:
    return MistralFormat.from_pretrained(str(tokenizer_dir))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def length(fmt, row) -> int:
    return len(fmt.encode_example(row["instruction"], row["response"]).input_ids)


def arguments(wiki, tmp_path, tokenizer_dir, *extra, max_tokens=256) -> list[str]:
    return ["--api_url", wiki.url, "--tokenizer", str(tokenizer_dir), "--max_tokens", str(max_tokens),
            "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out"), "--request_interval", "0",
            "--backoff_factor", "0", "--depth", "2", "--qa_backend", "none", *extra]  # no local writer on a GPU machine


def writer_arguments(server) -> list[str]:
    return ["--qa_backend", "openai", "--qa_api_url", server.url, "--qa_model", "test-writer-7b", "--qa_retries", "1",
            "--qa_timeout", "10"]


def prepare(capsys, *args) -> tuple[int, str, str]:
    """prepare_data.main in-process: (exit code, stdout, stderr)."""
    code = prepare_data.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# ---------------------------------------------------------------------------------------------------
# The main path, through the CLI


@pytest.mark.slow
def test_crawl_and_grounded_synthesis_end_to_end_and_a_rerun_asks_nothing(tmp_path, tokenizer_dir, fmt):
    with MediaWikiServer(cthulhu_wiki()) as wiki, OpenAIServer(passage_writer(EXTRA)) as writer:
        wiki.faults.extend(["maxlag", "429", "503html", "drop"])
        command = [PYTHON, "prepare_data.py", *arguments(wiki, tmp_path, tokenizer_dir, "--titles", "ヨグ＝ソトース",
                                                          "存在しないページ|Cthulhu", "--eval_ratio", "0.3", "--probe_ratio",
                                                          "0.3", "--qa_concurrency", "3", *writer_arguments(writer))]
        result = run_script(command, env={"OPENAI_API_KEY": KEY}, timeout=180)
        assert result.returncode == 0, result.stderr
        asked, fetched = len(writer.requests), len(wiki.requests)
        first = snapshot(tmp_path / "out")
        again = run_script(command, env={"OPENAI_API_KEY": KEY}, timeout=180)
        assert again.returncode == 0, again.stderr
        assert len(writer.requests) == asked and len(wiki.requests) == fetched  # zero calls on a rerun
        assert snapshot(tmp_path / "out") == first  # and the same bytes
    assert set(first) == OUTPUTS
    out = tmp_path / "out"
    train, eval_, known = (read_jsonl(out / f"{split}.jsonl") for split in ("train", "eval", "eval_known"))
    rows = train + eval_ + known
    assert all(FIELDS <= set(row) for row in rows) and load_records(out / "train.jsonl")
    assert {row["title"] for row in rows} == ALL_ARTICLES
    assert not {row["title"] for row in train} & {row["title"] for row in eval_}  # eval: never-trained articles
    assert {row["title"] for row in known} <= {row["title"] for row in train}  # eval_known: trained articles
    train_questions = [normalize_question(row["instruction"]) for row in train if row["kind"] != "rewrite"]
    assert len(set(train_questions)) == len(train_questions)  # a rewrite trains under its passage's questions
    assert {(row["instruction"], row["response"]) for row in train if row["kind"] == "rewrite"}
    assert len({(row["instruction"], row["response"]) for row in train}) == len(train)
    assert not {normalize_question(row["instruction"]) for row in known} & set(train_questions)
    assert all(length(fmt, row) <= 256 for row in rows)

    # Section pairs: K wordings each, subjects without disambiguation, no part numbers.
    recited = [row for row in train if row["kind"] == "recitation"]
    per_text = {}
    for row in recited:
        per_text.setdefault((row["title"], row["response"]), []).append(row["instruction"])
    assert per_text and all(len(questions) == 2 for questions in per_text.values())
    assert not any("（その" in row["instruction"] or "クトゥルフ神話）" in row["instruction"] for row in rows)
    assert any(row["title"] == "ダゴン (クトゥルフ神話)" and row["instruction"].startswith("ダゴン") for row in rows)

    # Synthesized pairs: grounded, by the named writer, probes held out; what was rejected, counted.
    synthesized = [row for row in rows if row["kind"] == "synthesized"]
    assert synthesized and all(row["writer"] == "test-writer-7b" for row in synthesized)
    assert {row["kind"] for row in known} <= {"synthesized", "cloze"} and any(r["kind"] == "synthesized" for r in known)
    assert not any("ラヴクラフト" in row["response"] or "この節" in row["instruction"] for row in synthesized)
    assert {row["title"] for row in synthesized if row["response"] == "ルルイエは太平洋の底に沈んだ。"} == {"ルルイエ"}
    stdout = result.stdout
    new = re.search(r"Q&A \(openai test-writer-7b\): \d+ passages, answers: (\d+) new \(0 cached\), requests: \1 "
                    r"\(0 retries\), tokens: [1-9]\d* prompt \+ [1-9]\d* completion", stdout).group(1)
    assert f"answers: 0 new ({new} cached), requests: 0 (0 retries), tokens: 0 prompt" in again.stdout
    assert "rejected: " in stdout and "short_answer_not_in_evidence" in stdout and "points_at_text" in stdout

    # The card: Hub metadata, counts per kind, the writer and its prompt, rejections, attribution.
    card = first["README.md"].decode()
    assert card.startswith("---\nlicense: cc-by-sa-4.0\nlanguage:\n- ja\n")
    assert "- split: eval_known\n    path: eval_known.jsonl" in card
    assert "`test-writer-7b`" in card and "| synthesized |" in card and "| recitation |" in card
    assert "<passage>" in card and "文章に書かれていない名前" in card  # the prompt used, verbatim
    assert re.search(r"\| `short_answer_not_in_evidence` \| the short answer is empty or not in the evidence \(per fact\) \| [1-9]\d* \|", card)
    page = cthulhu_wiki().pages
    assert f"oldid={page['ルルイエ'].revid}" in card and "CC BY-SA 4.0" in card

    # Every article's text, with its split, for the evaluation, the quiz and the chat page.
    sources = read_jsonl(out / "source_texts.jsonl")
    assert {source["title"] for source in sources} == ALL_ARTICLES
    assert {source["title"] for source in sources if source["split"] == "eval"} == {row["title"] for row in eval_}
    assert all(source["text"] and "[1]" not in source["text"] and "出典の説明文" not in source["text"] for source in sources)

    # The key was sent, and is nowhere else.
    assert "存在しないページ" in result.stderr  # reported, not fatal
    assert KEY not in result.stdout + result.stderr + again.stdout + again.stderr
    for path in [*(tmp_path / "out").rglob("*"), *(tmp_path / "cache").rglob("*")]:
        assert not path.is_file() or KEY.encode() not in path.read_bytes()


@pytest.mark.slow
def test_sigterm_during_synthesis_exits_130_leaves_no_partial_output_and_the_rerun_resumes(tmp_path, tokenizer_dir):
    """The first answer arrives, the others hang until the run is sent SIGTERM."""
    release = []

    def slow_writer(prompt):
        if release or not slow_writer.answered:
            slow_writer.answered = True
            return passage_writer()(prompt)
        wait_for(lambda: release, timeout=60)
        return passage_writer()(prompt)

    slow_writer.answered = False
    (tmp_path / "out").mkdir()
    with MediaWikiServer(cthulhu_wiki()) as wiki, OpenAIServer(slow_writer) as writer:
        assert prepare_data.main(arguments(wiki, tmp_path, tokenizer_dir)) == 0
        before = snapshot(tmp_path / "out")
        command = [PYTHON, "prepare_data.py", *arguments(wiki, tmp_path, tokenizer_dir, *writer_arguments(writer),
                                                          "--qa_concurrency", "2")]
        process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "OPENAI_API_KEY": KEY},
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert wait_for(lambda: len(writer.requests) >= 3, timeout=60)
            time.sleep(0.5)  # the first answer is cached by now
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
        finally:
            process.kill()
            release.append(True)
        assert process.returncode == 130, stderr
        assert "interrupted; run again to resume" in stderr and "Traceback" not in stderr
        assert snapshot(tmp_path / "out") == before
        assert not [path for path in tmp_path.rglob("*.tmp")]
        assert len(list((tmp_path / "cache" / "qa").rglob("*.json"))) == 1
        asked = len(writer.requests)
        resumed = run_script(command, env={"OPENAI_API_KEY": KEY}, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert re.search(r"\((1) cached\)", resumed.stdout)
    assert sum(request["kind"] == "qa_facts" for request in writer.requests[asked:]) == 13  # all passages but the cached one


# ---------------------------------------------------------------------------------------------------
# Held-out probes, failures, interrupts, protected folders (in-process)


def test_trained_articles_without_a_kept_pair_get_cloze_probes(tmp_path, tokenizer_dir, capsys, monkeypatch):
    """A writer whose every pair is rejected must not leave eval_known empty (sft_config.yaml trains with it)."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with MediaWikiServer(cthulhu_wiki()) as wiki, OpenAIServer() as writer:
        writer.always = Reply(content='{"pairs": [{"question": "この節の内容は？", "answer": "わかりません。"}]}')
        code, _, _ = prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--probe_ratio", "0.5"),
                             *writer_arguments(writer))
    assert code == 0
    train, known = read_jsonl(tmp_path / "out/train.jsonl"), read_jsonl(tmp_path / "out/eval_known.jsonl")
    assert known and {row["kind"] for row in known} == {"cloze"}
    assert {row["title"] for row in known} <= {row["title"] for row in train}


def test_without_a_writer_eval_known_holds_cloze_probes_of_trained_sentences(tmp_path, tokenizer_dir, capsys):
    with MediaWikiServer(cthulhu_wiki()) as wiki:
        code, stdout, _ = prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--phrasings", "3", "--probe_ratio", "0.5"))
    assert code == 0
    train, known = read_jsonl(tmp_path / "out/train.jsonl"), read_jsonl(tmp_path / "out/eval_known.jsonl")
    assert known and {row["kind"] for row in known} == {"cloze"}
    for probe in known:
        sentence = re.search(r"『(.*)』$", probe["instruction"]).group(1)
        assert "＿＿" in sentence and probe["answers"] == [probe["response"]]
        assert any(sentence.replace("＿＿", probe["response"]) in row["response"] for row in train if row["title"] == probe["title"])
    assert "eval_known: " in stdout and "cloze" in stdout
    trained = {row["title"] for row in train}
    probed = {row["title"] for row in known}
    assert f"known probes: {len(known)} for {len(probed)} of {len(trained)} trained articles" in stdout
    sources = read_jsonl(tmp_path / "out/source_texts.jsonl")
    assert all(isinstance(source["aliases"], list) for source in sources)  # the crawler's, or none
    assert "note: no model-written questions" in stdout and "--qa_api_url URL" in stdout
    asked = {row["title"]: row["instruction"] for row in train}  # works as works, headings never quoted
    assert asked["狂気の山脈にて"].startswith("『狂気の山脈にて』") and asked["インスマスを覆う影"].startswith("『")
    assert all(probe["response"] not in probe["title"] for probe in known)
    card = (tmp_path / "out/README.md").read_text(encoding="utf-8")
    assert "## No model-written questions" in card and "## Written by a model" not in card
    assert f"{len(known)} probes for {len(probed)} of {len(trained)} trained articles." in card
    recited = {}
    for row in train:
        recited.setdefault(row["response"], set()).add(row["instruction"])
    assert all(len(questions) == 3 for questions in recited.values())


def test_a_failing_endpoint_is_a_plain_error_and_earlier_outputs_stay(tmp_path, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with MediaWikiServer(cthulhu_wiki()) as wiki, OpenAIServer() as writer:
        assert prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir))[0] == 0
        before = snapshot(tmp_path / "out")
        writer.always = Reply(500, headers={"retry-after-ms": "10"})
        code, stdout, stderr = prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, *writer_arguments(writer)))
    assert code == 1
    assert "HTTP 500" in stderr and "after 1 retries" in stderr and "Run again to resume" in stderr
    assert "Traceback" not in stderr and KEY not in stdout + stderr
    assert snapshot(tmp_path / "out") == before and not list(tmp_path.rglob("*.tmp"))


def test_ctrl_c_while_writing_keeps_the_previous_set_whole(tmp_path, tokenizer_dir, capsys, monkeypatch):
    out = tmp_path / "out"
    with MediaWikiServer(cthulhu_wiki()) as wiki:
        assert prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--eval_ratio", "0.3"))[0] == 0
        before = snapshot(out)
        real_fsync, calls = os.fsync, []

        def fsync(fd):  # Ctrl-C while the second output file is being written
            calls.append(fd)
            if len(calls) == 2:
                raise KeyboardInterrupt
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        code, _, stderr = prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--eval_ratio", "0"))
        assert code == 130 and "interrupted; run again to resume" in stderr
        assert snapshot(out) == before  # the first run's set, whole, and no temporary file
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--eval_ratio", "0"))[0] == 0
    assert sorted(path.name for path in out.iterdir()) == ["README.md", "eval_known.jsonl", "source_texts.jsonl", "train.jsonl"]
    assert {source["split"] for source in read_jsonl(out / "source_texts.jsonl")} == {"train"}


def test_an_interrupted_crawl_fails_clearly_keeps_old_outputs_and_resumes(tmp_path, tokenizer_dir, capsys):
    with MediaWikiServer(cthulhu_wiki()) as wiki:
        assert prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--category", "", "--titles", "ハスター"))[0] == 0
        before = snapshot(tmp_path / "out")
        wiki.fail_after = len(wiki.requests) + 12  # the listings and a few pages, then an outage
        code, _, stderr = prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--retries", "1"))
        assert code == 1 and "HTTP 503" in stderr and "run again to resume" in stderr and "Traceback" not in stderr
        assert snapshot(tmp_path / "out") == before
        served = list(wiki.extracts_served)
        wiki.fail_after = None
        assert prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir))[0] == 0
    resumed = wiki.extracts_served[len(served):]
    assert len(served) > 1 and resumed and not set(served) & set(resumed)  # nothing fetched twice


def test_a_folder_holding_someone_elses_files_or_the_shipped_sample_is_refused(tmp_path, tokenizer_dir, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/README.md").write_text("# my notes\n", encoding="utf-8")
    (tmp_path / "out/train.jsonl").write_text('{"instruction": "mine", "response": "mine"}\n', encoding="utf-8")
    before = snapshot(tmp_path / "out")
    with MediaWikiServer(cthulhu_wiki()) as wiki:
        code, _, stderr = prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir))
        assert code == 2 and "not written by prepare_data.py" in stderr and not wiki.requests
        code, _, stderr = prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--out_dir", REPO / "data/sample"))
        assert code == 2 and "shipped hand-written sample" in stderr
    assert snapshot(tmp_path / "out") == before


def test_no_eval_split_writes_no_empty_eval_file_and_says_how_to_train(tmp_path, tokenizer_dir, capsys):
    with MediaWikiServer(cthulhu_wiki()) as wiki:
        code, _, stderr = prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--category", "", "--titles",
                                                     "ルルイエ", "--eval_ratio", "0.9"))
    assert code == 0
    assert {row["title"] for row in read_jsonl(tmp_path / "out/train.jsonl")} == {"ルルイエ"}
    assert not (tmp_path / "out/eval.jsonl").exists()
    assert "no eval split" in stderr and "--eval_file '' --eval_strategy no" in stderr


@pytest.mark.parametrize("category,message", [
    ("空の分類", "the listing of Category:空の分類 is empty"),
    ("Foo:Bar", "API error 'invalidcategory'"),
])
def test_a_category_with_nothing_to_crawl_is_bad_input_not_a_retry(tmp_path, tokenizer_dir, capsys, category, message):
    wiki_pages = cthulhu_wiki()
    wiki_pages.add_category("Category:空の分類")
    with MediaWikiServer(wiki_pages) as wiki:
        code, _, stderr = prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--category", category))
    assert code == 2 and message in stderr
    assert "run again to resume" not in stderr and "no article had text" not in stderr
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------
# Open book (RAFT)


def open_book_summary(stdout: str, ratio: str) -> dict[str, int]:
    found = re.search(r"open book: (?P<examples>\d+) examples \((?P<cited>\d+) with the fact's passage, (?P<absent>\d+) "
                      r"with distractors only\) for (?P<share>\d+)% of (?P<facts>\d+) trained facts \(--open_book_ratio "
                      rf"{ratio}\); chosen but not made: (?P<too_long>\d+) too long, (?P<no_distractor>\d+) without", stdout)
    assert found, stdout
    return {name: int(value) for name, value in found.groupdict().items()}


def test_open_book_ratio_asks_a_share_of_the_trained_facts_open_book_citing_their_passage(
        tmp_path, tokenizer_dir, capsys, monkeypatch, fmt, reference_tokenizer):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    outputs, asked = {}, []
    with MediaWikiServer(cthulhu_wiki()) as wiki, OpenAIServer() as writer:
        for ratio in ("0", "0.5", "1"):
            code, stdout, _ = prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--eval_ratio", "0.3", "--titles",
                                                         "ヨグ＝ソトース", "--open_book_ratio", ratio, max_tokens=1024),
                                      "--out_dir", tmp_path / ratio, *writer_arguments(writer))
            assert code == 0
            outputs[ratio] = stdout
            asked.append(len(writer.requests))
    assert asked[0] == asked[-1]  # the writer's answers come from the cache
    closed, half, out = tmp_path / "0", tmp_path / "0.5", tmp_path / "1"
    assert "open book: none (--open_book_ratio 0.0)" in outputs["0"]
    baseline = read_jsonl(closed / "train.jsonl")
    for folder in (half, out):
        for split in ("eval", "eval_known", "source_texts"):  # only train.jsonl changes, and only by the added rows
            assert (folder / f"{split}.jsonl").read_bytes() == (closed / f"{split}.jsonl").read_bytes()
        assert [row for row in read_jsonl(folder / "train.jsonl") if not row["kind"].startswith("open_book")] == baseline

    # The share, said in the summary and the card: every trained fact chosen at 1, about half of them at 0.5.
    everything, some = open_book_summary(outputs["1"], "1.0"), open_book_summary(outputs["0.5"], "0.5")
    assert everything["examples"] + everything["too_long"] + everything["no_distractor"] == everything["facts"]
    assert some["facts"] == everything["facts"] and 0 < some["examples"] < everything["examples"]
    train = read_jsonl(out / "train.jsonl")
    books = [row for row in train if row["kind"].startswith("open_book")]
    cited = [row for row in books if row["kind"] == "open_book"]
    absent = [row for row in books if row["kind"] == "open_book_absent"]
    assert cited and absent and [everything[key] for key in ("examples", "cited", "absent")] == \
        [len(books), len(cited), len(absent)]
    assert everything["share"] == round(100 * len(books) / everything["facts"])
    synthesized = {normalize_question(row["instruction"]): row for row in baseline if row["kind"] == "synthesized"}
    questions = [normalize_question(open_book_question(row)) for row in books]
    assert set(questions) <= set(synthesized) and len(set(questions)) == len(questions)  # each by a trained question
    card = (out / "README.md").read_text(encoding="utf-8")
    assert f"| open_book | {len(cited)} | 0 | 0 |" in card and f"| open_book_absent | {len(absent)} | 0 | 0 |" in card
    assert (f"## Open book (RAFT)\n\n{len(books)} rows of train.jsonl ({everything['share']}% of its "
            f"{everything['facts']} facts,") in card
    assert "- `open_book_ratio`: 1.0" in card

    # Each answer cites its own passage; one with distractors only says the passages do not state it.
    sources = {source["title"]: source for source in read_jsonl(out / "source_texts.jsonl")}
    for row in books:
        shown = shown_passages(row["instruction"])
        ids = fmt.encode_example(row["instruction"], row["response"]).input_ids  # what training reads
        assert ids == mistral_common_ids(reference_tokenizer, [{"role": "user", "content": row["instruction"]},
                                                               {"role": "assistant", "content": row["response"]}])
        assert shown and len(ids) <= 1024 and FIELDS <= set(row) and row["source"] == sources[row["title"]]["source"]
        if row["kind"] == "open_book":
            [number] = parse_citations(row["response"])
            heading, text = shown[number - 1]
            assert heading == "／".join(filter(None, [row["title"], row["section"]]))
            assert match_form(text) in match_form(sources[row["title"]]["text"])
            answer = synthesized[normalize_question(open_book_question(row))]["response"]
            assert row["response"] == with_citation(answer, number)
            assert match_form(answer) in match_form(text)  # the stand-in writer's answers are sentences of the passage
        else:
            assert row["response"] == NOT_FOUND
            assert not any(heading.startswith(row["title"]) for heading, _ in shown)

    # Nothing of an eval article is shown, and no held-out probe is asked open-book.
    unseen = [source["text"] for source in sources.values() if source["split"] == "eval"]
    sentences = [s.strip() for text in unseen for s in split_sentences(text) if len(s.strip()) >= 8]
    trained_text = "\n".join(row["instruction"] + "\n" + row["response"] for row in train)
    assert sentences and not [sentence for sentence in sentences if sentence in trained_text]
    probes = {normalize_question(row["instruction"]) for row in read_jsonl(out / "eval_known.jsonl")}
    assert probes and not probes & set(questions)


def test_open_book_ratio_without_a_writer_says_there_is_no_fact_to_ask(tmp_path, tokenizer_dir, capsys):
    with MediaWikiServer(cthulhu_wiki()) as wiki:
        code, stdout, stderr = prepare(capsys, *arguments(wiki, tmp_path, tokenizer_dir, "--open_book_ratio", "0.5"))
    assert code == 0 and "--open_book_ratio 0.5: no facts to ask open-book (they come from the writer)" in stderr
    assert "open book: none (--open_book_ratio 0.5)" in stdout
    assert not [row for row in read_jsonl(tmp_path / "out/train.jsonl") if row["kind"].startswith("open_book")]
    assert "## Open book" not in (tmp_path / "out/README.md").read_text(encoding="utf-8")


def test_open_book_ratio_is_checked_before_anything_runs(tmp_path, tokenizer_dir, capsys):
    for extra, message in [(("--open_book_ratio", "1.5"), "--open_book_ratio must be in [0, 1], got 1.5"),
                           (("--open_book_ratio", "0.3", "--from_json", "old.json"), "not with --from_json")]:
        with pytest.raises(SystemExit) as stopped:
            prepare_data.main(["--tokenizer", str(tokenizer_dir), "--out_dir", str(tmp_path / "out"), *extra])
        assert stopped.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        prepare_data.parse_args(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert re.search(r"--open_book_ratio OPEN_BOOK_RATIO share of the trained facts also asked open-book .* every fact "
                     r"still trains closed-book, so one adapter serves both ways; 0: none \(default: 0.0\)", help_text)


# ---------------------------------------------------------------------------------------------------
# The old notebook's file


@pytest.mark.slow
def test_tokenizer_and_max_tokens_default_to_sft_config_yaml(tmp_path, tokenizer_dir, fmt):
    """Against a copy of the scripts, so the test does not depend on the repository's own config."""
    shutil.copy(REPO / "prepare_data.py", tmp_path)
    shutil.copytree(REPO / "cthulhu_sft", tmp_path / "cthulhu_sft", ignore=shutil.ignore_patterns("__pycache__"))
    source = tmp_path / "old.json"
    source.write_text(json.dumps(LEGACY, ensure_ascii=False), encoding="utf-8")
    command = [PYTHON, "prepare_data.py", "--from_json", str(source), "--out_dir", str(tmp_path / "out")]

    (tmp_path / "sft_config.yaml").write_text(f"model_name_or_path: {tokenizer_dir}\nmax_length: 80\nhub_timeout: 5\n",
                                              encoding="utf-8")
    result = run_script(command, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(limit 80)" in result.stdout and str(tokenizer_dir) in (tmp_path / "out/README.md").read_text(encoding="utf-8")
    rows = read_jsonl(tmp_path / "out/train.jsonl") + read_jsonl(tmp_path / "out/eval.jsonl")
    assert max(length(fmt, row) for row in rows) <= 80


# ---------------------------------------------------------------------------------------------------
# Publishing


def hub_env(hub, home: Path) -> dict:
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": VALID_TOKEN, "HF_HUB_OFFLINE": "0", "HF_HOME": str(home)}


@pytest.mark.slow
def test_push_to_hub_publishes_the_splits_with_the_card_and_a_failure_keeps_the_files(tmp_path, tokenizer_dir):
    with MediaWikiServer(cthulhu_wiki()) as wiki, LoopbackHub() as hub:
        command = [PYTHON, "prepare_data.py", *arguments(wiki, tmp_path, tokenizer_dir, "--eval_ratio", "0.3",
                                                          "--push_to_hub", "tester/cthulhu-qa", "--hub_timeout", "30")]
        result = run_script(command, env=hub_env(hub, tmp_path / "hf"), timeout=180)
        assert result.returncode == 0, result.stderr
        files = hub.files[("dataset", "tester/cthulhu-qa")]
    out = tmp_path / "out"
    assert sorted(files) == ["README.md", "eval.jsonl", "eval_known.jsonl", "train.jsonl"]
    assert all(files[name] == (out / name).read_bytes() for name in files)
    assert files["README.md"].startswith(b"---\nlicense: cc-by-sa-4.0\n")
    assert "pushing" in result.stdout and VALID_TOKEN not in result.stdout + result.stderr
    assert "--card_datasets tester/cthulhu-qa" in result.stdout

    with MediaWikiServer(cthulhu_wiki()) as wiki, LoopbackHub(upload_status=400) as hub:  # 5xx would be retried
        failed = run_script(command[:2] + arguments(wiki, tmp_path, tokenizer_dir, "--push_to_hub", "tester/cthulhu-qa",
                                                    "--hub_timeout", "30", "--eval_ratio", "0.3"),
                            env=hub_env(hub, tmp_path / "hf"), timeout=180)
    assert failed.returncode == 1
    assert f"python -m cthulhu_sft.hub --dataset {out} tester/cthulhu-qa" in failed.stderr
    assert VALID_TOKEN not in failed.stdout + failed.stderr and "Traceback" not in failed.stderr
    assert (out / "train.jsonl").is_file() and (out / "README.md").is_file()


@pytest.mark.slow
def test_a_refused_token_stops_before_the_crawl(tmp_path, tokenizer_dir):
    with MediaWikiServer(cthulhu_wiki()) as wiki, RefusingHub(401) as hub:
        result = run_script([PYTHON, "prepare_data.py", *arguments(wiki, tmp_path, tokenizer_dir, "--push_to_hub",
                                                                    "tester/cthulhu-qa", "--hub_timeout", "30")],
                            env=hub_env(hub, tmp_path / "hf"), timeout=120)
        assert result.returncode == 1 and not wiki.requests
    assert VALID_TOKEN not in result.stdout + result.stderr and not (tmp_path / "out").exists()
