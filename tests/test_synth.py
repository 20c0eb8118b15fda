"""Grounded Q&A synthesis against a loopback OpenAI-compatible endpoint (tests/openai_server.py)."""

import json
from pathlib import Path

import pytest
from openai_server import OpenAIServer, Reply, passage_of, passage_writer

from cthulhu_sft.data import DataError
from cthulhu_sft.examples import Passage
from cthulhu_sft.synth import (
    AnswerCache,
    SynthError,
    Writer,
    load_prompt,
    parse_pairs,
    render,
    short_answer,
    synthesize,
)

PROMPT = Path(__file__).resolve().parent.parent / "prompts" / "qa_synthesis_ja.md"
KEY = "sk-loopback-secret-0123456789"
RULUIE = Passage("ルルイエ", "ルルイエ", "", "ルルイエは、南太平洋の海底に沈んだとされる架空の都市である。1928年の短編に登場する。",
                 ["ルルイエとは何ですか？"])
DAGON = Passage("ダゴン (クトゥルフ神話)", "ダゴン", "信仰", "ダゴンは、深きものどもに崇拝される存在である。インスマスの教団が祀っている。",
                ["ダゴンの信仰について教えてください。"])


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def writer(server: OpenAIServer, **settings) -> Writer:
    return Writer(server.url, "test-writer-7b", **{"timeout": 10, "retries": 2, **settings})


def run(server, tmp_path, passages=(RULUIE, DAGON), seen=None, fits=lambda q, a: True, **settings):
    return synthesize(list(passages), writer(server, **settings), load_prompt(PROMPT), AnswerCache(tmp_path / "qa"),
                      set() if seen is None else seen, fits)


def pairs(*items) -> str:
    return json.dumps({"pairs": [{"question": q, "answer": a} for q, a in items]}, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------------
# The prompt


def test_the_prompt_file_gets_the_passage_and_names_and_keeps_its_json_example():
    prompt = render(load_prompt(PROMPT), DAGON, 3)
    assert passage_of(prompt) == ("ダゴン", DAGON.text)
    assert "3 組" in prompt and "節: 信仰" in prompt and "タイトル: ダゴン (クトゥルフ神話)" in prompt
    assert '{"pairs": [{"question": "質問", "answer": "答え"}]}' in prompt and "{subject}" not in prompt


def test_a_prompt_file_without_the_passage_placeholder_is_bad_input(tmp_path):
    (tmp_path / "prompt.md").write_text("質問を作ってください。", encoding="utf-8")
    with pytest.raises(DataError, match=r"prompt.md: the Q&A prompt has no \{passage\}"):
        load_prompt(tmp_path / "prompt.md")
    with pytest.raises(DataError, match="cannot read"):
        load_prompt(tmp_path / "missing.md")


# ---------------------------------------------------------------------------------------------------
# Filters


def test_grounded_pairs_are_kept_and_a_term_absent_from_the_passage_is_rejected(tmp_path):
    with OpenAIServer(passage_writer([("{subject}を作った作家は誰ですか？", "ハワード・フィリップス・ラヴクラフトです。"),
                                      ("{subject}はどこにありますか？", "太平洋の海底です。")])) as server:
        kept, report = run(server, tmp_path)
    questions = [pair["question"] for _, pair in kept]
    assert len(kept) == 5 and report.kept == 5  # 2 sentences per passage, and RULUIE's place
    assert "ルルイエはどこにありますか？" in questions and "ダゴンはどこにありますか？" not in questions  # 太平洋: not in DAGON
    assert not any("作家" in question for question in questions)  # ラヴクラフト is in no passage
    assert report.rejected == {"ungrounded": 3}
    for passage, pair in kept:
        assert pair["answer"] in passage.text or pair["answer"] == "太平洋の海底です。"


def test_questions_pointing_at_the_text_or_not_naming_the_subject_and_non_japanese_answers_are_rejected(tmp_path):
    extra = [("この節で{subject}はどう描かれていますか？", "都市です。"), ("上記の文章中の都市は？", "ルルイエです。"),
             ("According to the passage, what is {subject}?", "都市です。"), ("それはいつ沈みましたか？", "1928年です。"),
             ("{subject}の英語名は？", "A sunken city."), ("{subject}が登場した年は？", "  ")]
    with OpenAIServer(passage_writer(extra)) as server:
        kept, report = run(server, tmp_path, passages=[RULUIE])
    assert report.rejected == {"points_at_text": 3, "no_subject": 1, "not_japanese": 2}
    assert len(kept) == 2


def test_answers_that_abstain_or_cannot_be_checked_and_questions_that_invent_are_rejected(tmp_path):
    """Without key terms the grounding filter has nothing to compare: such an answer is kept only when the passage
    states it; an abstention would teach the model to give up on a trained topic; a question's invented term
    would later count as support in the evaluation."""
    extra = [("{subject}とは何ですか？", "わかりません。"), ("{subject}は何と呼ばれていますか？", "邪神と呼ばれています。"),
             ("{subject}はいつできましたか？", "およそ数百万年前です。"),
             ("ラヴクラフトが南極で見つけた{subject}は何ですか？", "都市です。")]
    with OpenAIServer(passage_writer(extra)) as server:
        kept, report = run(server, tmp_path, passages=[RULUIE])
    assert report.rejected == {"abstains": 1, "unverifiable": 2, "question_ungrounded": 1}
    assert all(pair["answer"] not in ("わかりません。", "邪神と呼ばれています。") for _, pair in kept)


def test_fenced_wrapped_malformed_and_duplicate_outputs(tmp_path):
    fenced = "以下が答えです。\n```json\n" + pairs(("ルルイエとは何ですか？", "架空の都市です。"),
                                                  ("ルルイエはどこに沈んでいますか？", "南太平洋の海底です。")) + "\n```"
    wrapped = "Sure! " + pairs(("ダゴンは誰に崇拝されていますか？", "深きものどもです。"),
                               ("ダゴンは　誰に崇拝されていますか", "深きものどもです。")) + " Hope this helps {x}."
    with OpenAIServer() as server:
        server.replies.extend([Reply(content=fenced), Reply(content=wrapped)])
        kept, report = run(server, tmp_path, seen={"ルルイエとは何ですか"}, concurrency=1)
    assert [pair["question"] for _, pair in kept] == ["ルルイエはどこに沈んでいますか？", "ダゴンは誰に崇拝されていますか？"]
    assert report.rejected == {"duplicate": 2}  # a recitation question already in the dataset, and a respelling
    with OpenAIServer() as server:
        server.replies.extend([Reply(content="I cannot help with that."),
                               Reply(content='{"pairs": [{"question": "ダゴンとは？"}, "ダゴン", {"question": "ダゴンは何ですか？", "answer": "深きものどもに崇拝される存在です。"}]}')])
        kept, report = run(server, tmp_path / "again", concurrency=1)
    assert report.rejected == {"malformed": 1, "malformed_pair": 2}
    assert [pair["question"] for _, pair in kept] == ["ダゴンは何ですか？"]  # no key term, but the passage states it
    assert parse_pairs('[{"question": "q", "answer": "a"}]') == [{"question": "q", "answer": "a"}]
    assert parse_pairs('{"pairs": [') is None and parse_pairs("") is None


def test_too_long_examples_are_rejected(tmp_path):
    with OpenAIServer() as server:
        kept, report = run(server, tmp_path, passages=[RULUIE], fits=lambda question, answer: len(answer) < 25)
    assert report.rejected == {"too_long": 1} and len(kept) == 1


@pytest.mark.parametrize("answer, short", [("1928年です。", "1928年"), ("『ウィアード・テイルズ』です。", "ウィアード・テイルズ"),
                                           ("南極", "南極"), ("太平洋の底に沈んでいます。", None),
                                           ("南太平洋の海底に沈んだ、架空の都市です。", None)])
def test_short_answers_are_carried_as_accepted_forms(answer, short):
    assert short_answer(answer) == short


# ---------------------------------------------------------------------------------------------------
# The endpoint


def test_each_request_asks_for_the_json_schema_sends_the_key_and_a_rerun_makes_zero_calls(tmp_path):
    with OpenAIServer() as server:
        first, report = run(server, tmp_path)
        assert len(server.requests) == 2 == report.requests and report.cached == 0
        body = server.requests[0]["body"]
        assert body["model"] == "test-writer-7b" and body["response_format"]["type"] == "json_schema"
        schema = body["response_format"]["json_schema"]["schema"]
        assert schema["properties"]["pairs"]["items"]["required"] == ["question", "answer"]
        assert {request["headers"].get("authorization") for request in server.requests} == {f"Bearer {KEY}"}
        assert report.prompt_tokens > 0 and report.completion_tokens > 0
        again, rerun = run(server, tmp_path)
        assert len(server.requests) == 2 and rerun.requests == 0 and rerun.cached == 2
    assert again == first
    cached = "".join(path.read_text(encoding="utf-8") for path in (tmp_path / "qa").rglob("*.json"))
    assert KEY not in cached and "test-writer-7b" in cached


def test_temporary_files_a_killed_run_left_in_the_cache_are_removed(tmp_path):
    (tmp_path / "qa" / "ab").mkdir(parents=True)
    (tmp_path / "qa" / "ab" / ".abc.json.x1y2.tmp").write_text("{", encoding="utf-8")
    AnswerCache(tmp_path / "qa")
    assert not list((tmp_path / "qa").rglob("*.tmp"))


def test_an_edited_prompt_or_another_model_asks_again(tmp_path):
    with OpenAIServer() as server:
        run(server, tmp_path, passages=[RULUIE])
        synthesize([RULUIE], Writer(server.url, "another-model", timeout=10), load_prompt(PROMPT),
                   AnswerCache(tmp_path / "qa"), set(), lambda q, a: True)
        synthesize([RULUIE], writer(server), load_prompt(PROMPT) + "\n追記。", AnswerCache(tmp_path / "qa"), set(),
                   lambda q, a: True)
    assert len(server.requests) == 3


def test_a_429_with_retry_after_is_waited_out_then_succeeds(tmp_path):
    with OpenAIServer() as server:
        server.replies.append(Reply(429, headers={"Retry-After": "1"}))
        kept, report = run(server, tmp_path, passages=[RULUIE])
    assert len(kept) == 2 and report.requests == 2 and report.retries == 1
    assert server.requests[1]["time"] - server.requests[0]["time"] >= 0.95  # the server's wait, not the 0.5 s backoff


def test_a_server_without_structured_output_is_asked_again_without_the_schema(tmp_path):
    with OpenAIServer() as server:
        server.replies.append(Reply(400, body='{"error": {"message": "response_format json_schema is not supported"}}'))
        kept, _ = run(server, tmp_path, concurrency=1)
    assert len(kept) == 4
    assert "response_format" in server.requests[0]["body"]
    assert all(set(request["body"]) == {"model", "messages"} for request in server.requests[1:])  # the prompt alone


def test_a_500_until_retries_run_out_is_a_plain_error_and_answers_received_stay_cached(tmp_path):
    with OpenAIServer() as server:
        run(server, tmp_path, passages=[RULUIE])
        server.always = Reply(500, headers={"retry-after-ms": "10"})
        with pytest.raises(SynthError) as failure:
            run(server, tmp_path, passages=[RULUIE, DAGON], retries=2)
        message = str(failure.value)
        assert "HTTP 500" in message and "after 2 retries" in message and "run again to resume" in message.lower()
        assert KEY not in message
        assert len(server.requests) == 1 + 3  # RULUIE cached; DAGON asked 3 times
        server.always = None
        kept, report = run(server, tmp_path, passages=[RULUIE, DAGON])
    assert report.cached == 1 and report.requests == 1 and len(kept) == 4


def test_an_unreachable_endpoint_is_a_plain_error(tmp_path):
    with OpenAIServer() as server:
        url = server.url
    with pytest.raises(SynthError, match="cannot reach the Q&A endpoint"):
        synthesize([RULUIE], Writer(url, "m", timeout=5, retries=0), load_prompt(PROMPT), AnswerCache(tmp_path),
                   set(), lambda q, a: True)


@pytest.mark.parametrize("reply, hint", [
    (Reply(200, body="<html><title>My web UI</title></html>"), "not JSON; is --qa_api_url the API's base URL"),
    (Reply(404, body='{"error": {"message": "The model `x` does not exist."}}'), "a model it serves?"),
    (Reply(401, body='{"error": {"message": "Incorrect API key provided"}}'), "set OPENAI_API_KEY"),
])
def test_an_endpoint_that_cannot_serve_the_request_is_a_plain_error_with_a_hint(tmp_path, reply, hint):
    with OpenAIServer() as server:
        server.always = reply
        with pytest.raises(SynthError, match="Run again to resume") as failure:
            run(server, tmp_path, passages=[RULUIE])
    assert hint in str(failure.value) and KEY not in str(failure.value)
