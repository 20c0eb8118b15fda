"""The writer backends: choosing one, and the transformers backend end to end on the CPU with the tiny model
(its output is garbage: rejected as malformed, counted, nothing breaks)."""

import json
import time

import pytest
import torch
from mediawiki_server import MediaWikiServer, cthulhu_wiki
from openai_server import OpenAIServer, Reply

import prepare_data
from cthulhu_sft.examples import Passage
from cthulhu_sft.synth import load_prompts, synthesize
from cthulhu_sft.writers import (
    MAX_ANSWER_BYTES,
    AnswerCache,
    OpenAIWriter,
    Request,
    TransformersWriter,
    make_writer,
    resolve_backend,
)

RULUIE = Passage("ルルイエ", "ルルイエ", "", "ルルイエは、南太平洋の海底に沈んだとされる架空の都市である。1928年の短編に登場する。",
                 ["ルルイエとは何ですか？"])
DAGON = Passage("ダゴン (クトゥルフ神話)", "ダゴン", "信仰", "ダゴンは、深きものどもに崇拝される存在である。インスマスの教団が祀っている。",
                ["ダゴンの信仰について教えてください。"])


def test_auto_is_the_endpoint_with_a_url_else_a_local_writer_on_cuda_else_none():
    import importlib.util

    local = "vllm" if importlib.util.find_spec("vllm") else "transformers"
    assert resolve_backend("auto", "http://127.0.0.1:1/v1") == "openai"
    assert resolve_backend("auto", None) == (local if torch.cuda.is_available() else "none")
    assert resolve_backend("transformers", None) == "transformers"
    assert isinstance(make_writer("openai", "m", "http://127.0.0.1:1/v1"), OpenAIWriter)
    with pytest.raises(ValueError, match="no writer for backend 'none'"):
        make_writer("none", "m")


def test_the_cache_key_is_the_request_and_the_model_whatever_the_backend():
    request = Request("プロンプト", "qa_facts", {"type": "object"}, 0.2, 64)
    assert request.key("m") == Request("プロンプト", "qa_facts", {"type": "object"}, 0.2, 64).key("m")
    assert len({request.key("m"), request.key("other"), Request("プロンプト", "qa_facts", {"type": "object"}, 0.2, 64,
                                                               vote=1).key("m")}) == 3


def test_the_transformers_backend_runs_the_tiny_model_and_its_garbage_is_counted_as_malformed(tiny_model_dir, tmp_path):
    writer = TransformersWriter(str(tiny_model_dir), batch_size=2)
    facts, rewrites, report = synthesize([RULUIE, DAGON], writer, load_prompts(), AnswerCache(tmp_path / "qa"),
                                         rewrites=1, max_tokens=12)
    assert not facts and not rewrites
    assert report.backend == "transformers" and report.model == str(tiny_model_dir)
    assert report.rejected["malformed"] == 2 and report.rejected["rewrite_malformed"] == 2
    assert report.generated == 4 == report.requests and 0 < report.completion_tokens <= 4 * 12
    answers = [json.loads(path.read_text(encoding="utf-8")) for path in (tmp_path / "qa").rglob("*.json")]
    assert len(answers) == 4 and all(answer["usage"]["prompt_tokens"] > 100 for answer in answers)
    writer.close()
    assert writer.loaded is None
    again = TransformersWriter(str(tiny_model_dir))
    _, _, rerun = synthesize([RULUIE, DAGON], again, load_prompts(), AnswerCache(tmp_path / "qa"), rewrites=1,
                             max_tokens=12)
    assert rerun.generated == 0 and rerun.cached == 4 and again.loaded is None  # a rerun loads no model


def test_prepare_data_with_the_transformers_backend_and_the_tiny_model_end_to_end(tmp_path, tiny_model_dir, capsys):
    with MediaWikiServer(cthulhu_wiki()) as wiki:
        code = prepare_data.main(["--api_url", wiki.url, "--tokenizer", str(tiny_model_dir), "--max_tokens", "256",
                                  "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out"),
                                  "--request_interval", "0", "--titles", "ルルイエ", "--category", "",
                                  "--qa_backend", "transformers", "--qa_model", str(tiny_model_dir), "--rewrites", "1",
                                  "--qa_max_tokens", "8", "--qa_batch_size", "16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"Q&A (transformers {tiny_model_dir})" in out and "malformed" in out and "facts kept 0" in out
    assert "synthesized" not in (tmp_path / "out" / "train.jsonl").read_text(encoding="utf-8")


def test_without_a_writer_the_start_the_summary_and_the_card_say_what_the_set_lacks(tmp_path, tokenizer_dir, capsys):
    with MediaWikiServer(cthulhu_wiki()) as wiki:
        code = prepare_data.main(["--api_url", wiki.url, "--tokenizer", str(tokenizer_dir), "--max_tokens", "256",
                                  "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out"),
                                  "--request_interval", "0", "--titles", "ルルイエ", "--category", "",
                                  "--qa_backend", "none"])  # what auto is on a machine without CUDA
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "no model-written questions" in err and "no model-written questions" in out
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "## No model-written questions" in card and "--qa_api_url URL --qa_model NAME" in card


@pytest.mark.parametrize("argv, message", [
    (["--qa_api_url", "http://x/v1"], "--qa_api_url and --qa_model go together"),
    (["--qa_backend", "openai"], "--qa_api_url and --qa_model go together"),
    (["--qa_backend", "transformers", "--qa_api_url", "http://x/v1", "--qa_model", "m"], "needs --qa_backend openai"),
    (["--qa_verify", "-1"], "--qa_verify and --rewrites >= 0"),
    (["--qa_timeout", "0"], "--qa_timeout > 0"),
    pytest.param(["--qa_model", "m"], "without --qa_api_url is a local writer, which needs a CUDA machine",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="auto is a local writer on CUDA")),
])
def test_writer_options_that_cannot_work_are_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        prepare_data.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_local_writer_defaults_to_the_base_model_of_sft_config():
    from cthulhu_sft.config import sft_defaults

    args = prepare_data.parse_args(["--qa_backend", "transformers"])
    assert args.qa_model == sft_defaults()["model_name_or_path"] and args.rewrites == 2 and args.qa_verify == 1
    assert prepare_data.parse_args(["--qa_backend", "none", "--qa_model", "m"]).qa_model is None


def crawl_arguments(wiki, tmp_path, tokenizer_dir, *extra) -> list[str]:
    return ["--api_url", wiki.url, "--tokenizer", str(tokenizer_dir), "--max_tokens", "256", "--cache_dir",
            str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out"), "--request_interval", "0", "--titles",
            "ルルイエ", "--category", "", *extra]


def test_prepare_data_cuts_off_a_trickling_endpoint_at_qa_timeout(tmp_path, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    with MediaWikiServer(cthulhu_wiki()) as wiki, OpenAIServer() as server:
        server.always = Reply(content='{"facts": []}' + " " * 300, trickle=0.05)  # the body alone: about 20 s
        started = time.monotonic()
        code = prepare_data.main(crawl_arguments(wiki, tmp_path, tokenizer_dir, "--qa_api_url", server.url,
                                                 "--qa_model", "m", "--qa_timeout", "1", "--qa_retries", "0"))
        elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 1 and "did not answer in full within 1s (after 0 retries)" in err and "Traceback" not in err
    assert elapsed < 10 and not (tmp_path / "out" / "train.jsonl").exists()


def test_prepare_data_skips_and_counts_an_answer_over_the_size_limit(tmp_path, tokenizer_dir, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-loopback")
    with MediaWikiServer(cthulhu_wiki()) as wiki, OpenAIServer() as server:
        server.replies.append(Reply(content="x" * (MAX_ANSWER_BYTES + 1)))
        code = prepare_data.main(crawl_arguments(wiki, tmp_path, tokenizer_dir, "--qa_api_url", server.url,
                                                 "--qa_model", "m", "--qa_concurrency", "1"))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "too_large 1" in out and "facts kept" in out


def test_a_writer_model_that_cannot_be_loaded_is_one_plain_error(tmp_path, tokenizer_dir, capsys):
    with MediaWikiServer(cthulhu_wiki()) as wiki:
        code = prepare_data.main(crawl_arguments(wiki, tmp_path, tokenizer_dir, "--qa_backend", "transformers",
                                                 "--qa_model", str(tmp_path / "missing-model")))
    err = capsys.readouterr().err
    assert code == 1 and "cannot load the writer model" in err and "--qa_backend none" in err and "Traceback" not in err
