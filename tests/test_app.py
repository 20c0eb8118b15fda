"""app.py, the chat page: support marking and the page's handlers in-process, then the real CLI in Chromium.

The browser tests start `python app.py` on the tiny random Mistral with a tiny adapter and drive the page with
Playwright in Debian's chromium (nothing is downloaded). They save a screenshot of the page to
output/test-artifacts/chat_page.png. The model is random: its answers are noise, full of Latin words that no
support text contains, which is what the marking tests need.
"""

import html
import json
import os
import re
import shutil
import socket
import subprocess
import time

import pytest
from conftest import PYTHON, REPO, load_script, mistral_common_ids

from cthulhu_sft.config import DecodingArguments
from cthulhu_sft.format import MistralFormat
from cthulhu_sft.inference import Generation, generate, load_model, stream_answer
from cthulhu_sft.metrics import key_terms, normalize, unsupported_terms

ARTIFACTS = REPO / "output" / "test-artifacts"
QUESTION = "クトゥルフとは？"
ANSWER_TOKENS = 60  # enough tokens for a streamed answer to be seen growing, few enough to be quick


@pytest.fixture(scope="module")
def app():
    return load_script("app")


@pytest.fixture(scope="module")
def fmt(tiny_model_dir) -> MistralFormat:
    return MistralFormat.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def tuned(tiny_adapter_dir, tiny_model_dir):
    return load_model(str(tiny_model_dir), str(tiny_adapter_dir))


@pytest.fixture(autouse=True)
def no_space_variables(monkeypatch):
    for name in ("CTHULHU_ADAPTER", "CTHULHU_APP_ARGS"):
        monkeypatch.delenv(name, raising=False)


def user(content):
    return {"role": "user", "content": content}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def support_files(tmp_path, article: str, response: str):
    source_texts = write_jsonl(tmp_path / "source_texts.jsonl", [{"title": "記事", "text": article}])
    train_file = write_jsonl(tmp_path / "train.jsonl", [{"instruction": "質問", "response": response}])
    return source_texts, train_file


def marks(shown: str) -> list[str]:
    return [html.unescape(mark) for mark in re.findall(r'<mark class="unsupported">(.*?)</mark>', shown)]


# --- support marking ---------------------------------------------------------------------------------------


def test_terms_absent_from_articles_and_training_answers_are_marked(app, tmp_path):
    article, response = "クトゥルフは1926年の作品に登場する。南太平洋の海底。", "ルルイエは海底の都市です。"
    support = app.read_support(*support_files(tmp_path, article, response))
    answer = "クトゥルフはルルイエに眠る。ラヴクラフトが1926年と1928年に書いた Dagon も。太平洋と南極。"
    assert support.unsupported(answer) == {"ラヴクラフト", "1928", "dagon", "南極"}  # 太平洋 is in 南太平洋
    shown = app.marked_html(answer, support.unsupported(answer))
    assert marks(shown) == ["ラヴクラフト", "1928", "Dagon", "南極"]  # the answer's own spelling, in reading order
    assert html.unescape(re.sub(r"</?mark[^>]*>", "", shown)) == answer


def test_a_name_is_not_found_across_two_support_texts(app, tmp_path):
    source_texts = write_jsonl(tmp_path / "source_texts.jsonl", [{"title": "a", "text": "前半はクトゥ"},
                                                                 {"title": "b", "text": "ルフ。後半"}])
    assert app.read_support(str(source_texts), None).unsupported("クトゥルフ") == {"クトゥルフ"}


def test_a_term_is_not_marked_inside_a_longer_supported_one(app):
    answer = "クトゥとクトゥルフ、ｸﾄｩ、Ｒ’ｌｙｅｈ と r'lyehian"
    unsupported = {"クトゥ", "r'lyeh"}  # クトゥルフ and r'lyehian are supported
    assert unsupported <= key_terms(answer)
    assert marks(app.marked_html(answer, unsupported)) == ["クトゥ", "ｸﾄｩ", "Ｒ’ｌｙｅｈ"]


def test_marked_answer_is_escaped_html(app):
    shown = app.marked_html("<script>alert(1)</script> Nyarlathotep & <b>", {"nyarlathotep", "alert", "script"})
    assert "<script>" not in shown and "<b>" not in shown and "&amp;" in shown
    assert marks(shown) == ["script", "alert", "script", "Nyarlathotep"]


def test_shown_answer_lists_unsupported_terms_and_a_cut(app):
    support = app.Support(texts=("クトゥルフ",), sources=("x",))
    shown = app.shown_answer(Generation(text="クトゥルフとダゴン", token_ids=[1, 2], stopped=False), support)
    assert marks(shown) == ["ダゴン"] and "not in the support texts: ダゴン" in shown and "cut at max new tokens" in shown
    stopped = app.shown_answer(Generation(text="クトゥルフ", token_ids=[1, 2], stopped=True), support)
    assert stopped == "クトゥルフ"
    english = app.shown_answer(Generation(text="Cthulhu sleeps in R'lyeh.", token_ids=[1], stopped=True), support)
    assert marks(english) == ["Cthulhu", "sleeps", "R'lyeh"] and "not a Japanese answer" in english


def test_without_support_files_every_term_is_marked_and_the_legend_says_why(app):
    support = app.read_support(None, None)
    assert support.unsupported("ダゴンは1926年に") == {"ダゴン", "1926"}
    assert "すべてのキーワードに印が付きます" in app.legend(support)


# --- arguments --------------------------------------------------------------------------------------------


def test_support_defaults_to_the_adapter_config_train_file(app, tiny_adapter_dir, tmp_path, monkeypatch, capsys):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter_dir, adapter)
    train_file = write_jsonl(tmp_path / "mine.jsonl", [{"instruction": "q", "response": "ダゴン"}])
    (adapter / "config.yaml").write_text(f"train_file: {train_file}\n")
    monkeypatch.chdir(tmp_path)  # no data/ here: the source-texts default is skipped, with a note
    args = app.parse_args(["--adapter", str(adapter)])
    assert "note: data/source_texts.jsonl not found" in capsys.readouterr().err
    assert args.support.sources == (f"{train_file}（学習の回答 1 件）",)
    assert args.support.unsupported("ダゴンとハスター") == {"ハスター"}


def test_space_reads_the_adapter_and_arguments_from_the_environment(app, tiny_adapter_dir, monkeypatch):
    monkeypatch.setenv("CTHULHU_ADAPTER", str(tiny_adapter_dir))
    monkeypatch.setenv("CTHULHU_APP_ARGS", "--load_in_8bit --port 7999")
    args = app.parse_args([])
    assert (args.adapter, args.load_in_8bit, args.port) == (str(tiny_adapter_dir), True, 7999)


@pytest.mark.parametrize(
    "arguments,message",
    [
        ([], "give --adapter (a folder or Hub id) or set $CTHULHU_ADAPTER"),
        (["--adapter", "ADAPTER", "--load_in_8bit", "--load_in_4bit"], "not both"),
        (["--adapter", "ADAPTER", "--source_texts", "MISSING"], "MISSING: file not found"),
        (["--adapter", "ADAPTER", "--train_file", "BAD"], "BAD:2: field 'response': missing"),
        (["--adapter", "ADAPTER", "--port", "70000"], "--port 70000: not a port number"),
    ],
)
def test_bad_arguments_stop_the_start_with_code_2(app, arguments, message, tiny_adapter_dir, tmp_path, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "q", "response": "a"}, {"instruction": "q"}])
    names = {"ADAPTER": str(tiny_adapter_dir), "MISSING": str(tmp_path / "missing.jsonl"), "BAD": str(bad)}
    with pytest.raises(SystemExit) as exit_info:
        app.parse_args([names.get(argument, argument) for argument in arguments])
    assert exit_info.value.code == 2
    expected = message.replace("MISSING", names["MISSING"]).replace("BAD", names["BAD"])
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize(
    "adapter,base,message",
    [
        ("MODEL", "MODEL", "--adapter MODEL: no adapter_config.json in this folder"),
        ("ADAPTER", "./no-such-base", "--base_model ./no-such-base: no such folder"),
        ("ADAPTER", "EMPTY", "cannot load the model (EMPTY + ADAPTER): ValueError: Unrecognized model"),
    ],
)
def test_a_model_that_cannot_load_is_a_message_for_the_page(app, adapter, base, message, tiny_model_dir,
                                                            tiny_adapter_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    names = {"MODEL": str(tiny_model_dir), "ADAPTER": str(tiny_adapter_dir), "EMPTY": str(tmp_path / "empty")}
    args = app.parse_args(["--adapter", names.get(adapter, adapter), "--base_model", names.get(base, base)])
    model, fmt, problem = app.load(args)
    assert model is None and fmt is None
    for name, value in names.items():
        message = message.replace(name, value)
    assert problem.startswith(message) and "\n" not in problem


# --- the page's handlers, in-process ----------------------------------------------------------------------


def chat_app(app, model, fmt, support=None, problem=None):
    return app.ChatApp(model, fmt, support or app.Support(), "title", DecodingArguments(), problem)


def answer(chat, question, chats, compare=False, max_new_tokens=12):
    """Runs the page's send handler to the end; returns its last outputs."""
    *_, last = chat.respond(question, chats, compare, 0, 0.9, max_new_tokens)
    return last


def test_history_is_the_plain_conversation_encoded_as_mistral_common_does(
    app, tuned, fmt, tmp_path, serving_reference_tokenizer
):
    # Every term of any answer is unsupported, so the page shows marks that must not reach the history.
    chat = chat_app(app, tuned, fmt, app.read_support(*support_files(tmp_path, "無", "無")))
    chats = app.empty_chats()
    answer(chat, "クトゥルフとは？", chats)
    answer(chat, "  ではルルイエは？\n", chats)
    history = chats["adapter"]["history"]
    assert [m["role"] for m in history] == ["user", "assistant"] * 2 and history[2]["content"] == "ではルルイエは？"
    [first] = generate(tuned, fmt, [history[:1]], temperature=0, max_new_tokens=12)
    [second] = generate(tuned, fmt, [history[:3]], temperature=0, max_new_tokens=12)
    assert [history[1]["content"], history[3]["content"]] == [first.text, second.text]
    assert any(marks(m["content"]) for m in chats["adapter"]["shown"])
    follow_up = history + [user("ダゴンは？")]
    assert fmt.encode_prompt(follow_up) == mistral_common_ids(serving_reference_tokenizer, follow_up)


def test_compare_answers_with_the_adapter_disabled_then_enabled_again(app, tuned, fmt, tiny_model_dir):
    base = load_model(str(tiny_model_dir))
    chat, chats = chat_app(app, tuned, fmt), app.empty_chats()
    adapter_chat, base_chat, *_ = answer(chat, QUESTION, chats, compare=True)
    [expected_base] = generate(base, fmt, [[user(QUESTION)]], temperature=0, max_new_tokens=12)
    [expected_tuned] = generate(tuned, fmt, [[user(QUESTION)]], temperature=0, max_new_tokens=12)
    assert expected_base.text != expected_tuned.text  # the adapter changes the answer
    assert chats["base"]["history"][1]["content"] == expected_base.text
    assert chats["adapter"]["history"][1]["content"] == expected_tuned.text
    assert len(adapter_chat) == len(base_chat) == 2
    assert generate(tuned, fmt, [[user(QUESTION)]], temperature=0, max_new_tokens=12)[0] == expected_tuned


def test_empty_question_and_unloadable_model_answer_with_a_message(app, tuned, fmt):
    chats = app.empty_chats()
    *_, status, box = answer(chat_app(app, tuned, fmt), " \n ", chats)
    assert "Type a question first" in status and chats == app.empty_chats()
    *_, status, box = answer(chat_app(app, None, None, problem="--adapter x: no adapter_config.json"), "q", chats)
    assert "no adapter_config.json" in status and box == "q" and chats == app.empty_chats()


def test_stream_answer_grows_to_generates_answer_and_stops_when_closed(tuned, fmt):
    conversation = [user(QUESTION)]
    parts = list(stream_answer(tuned, fmt, conversation, temperature=0, max_new_tokens=20))
    texts = [text for text, final in parts if final is None]
    assert len(texts) > 3 and all(later.startswith(earlier) for earlier, later in zip(texts, texts[1:]))
    [expected] = generate(tuned, fmt, [conversation], temperature=0, max_new_tokens=20)
    assert parts[-1] == (expected.text, expected) and texts[-1] == expected.text
    stream = stream_answer(tuned, fmt, conversation, temperature=0, max_new_tokens=500)
    next(stream)
    started = time.monotonic()
    stream.close()  # returns once generation has stopped, long before 500 tokens
    assert time.monotonic() - started < 5
    assert generate(tuned, fmt, [conversation], temperature=0, max_new_tokens=20)[0] == expected


def test_the_legend_shows_file_names_as_text(app):
    support = app.Support(texts=("x",), sources=('<img src=x onerror="alert(1)">（記事 1 件の本文）', "my_own_file.jsonl"))
    legend = app.legend(support)
    assert "<img" not in legend and "&lt;img src=x onerror=" in legend
    assert r"my\_own\_file.jsonl" in legend  # not "my<em>own</em>file" in Markdown


def test_the_page_takes_no_uploads_and_gives_our_share_hint(app, capsys):
    import httpx

    chat = chat_app(app, None, None, app.Support(sources=("<b>names</b>",)), problem="no model in this test")
    page = app.serve(chat.page(), free_port(), share=False, block=False)
    try:
        upload = httpx.post(f"{page.local_url}gradio_api/upload", files={"files": ("x.txt", b"data")}, timeout=30)
        config = httpx.get(f"{page.local_url}config", timeout=30).json()
    finally:
        page.close()
    assert upload.status_code == 403
    [legend] = [c["props"]["value"] for c in config["components"] if c.get("props", {}).get("elem_id") == "legend"]
    assert "<b>" not in legend and "&lt;b&gt;names" in legend
    out = capsys.readouterr().out
    assert "Running on local URL" in out and "start app.py with --share" in out and "share=True" not in out


# --- the real CLI in a real browser -----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Page:
    """`python app.py ...` in a subprocess, until it serves the page (or stops)."""

    def __init__(self, arguments: list[str], log_path):
        self.port = free_port()
        self.log_path = log_path
        self.log = open(log_path, "w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("CTHULHU_")}
        self.process = subprocess.Popen(
            [PYTHON, "app.py", *arguments, "--port", str(self.port)], cwd=REPO, env={**env, "PYTHONUNBUFFERED": "1"},
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while "Running on local URL" not in log_path.read_text():
            assert self.process.poll() is None, f"app.py exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"app.py did not start:\n{log_path.read_text()}"
            time.sleep(0.5)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


def test_the_documented_test_command_and_ci_show_why_a_test_was_skipped():
    """The browser tests skip without chromium; `-rs` prints that reason instead of a bare "2 skipped"."""
    readme_command = next(line for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
                          if "python -m pytest" in line and "requirements-test.txt" in line)
    ci_command = next(line for line in (REPO / ".ci" / "run").read_text().splitlines() if "python -m pytest" in line)
    for command in (readme_command, ci_command):
        assert " -rs" in command, command


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if not chromium:
        pytest.skip("no chromium installed (Debian: apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        yield browser
        browser.close()


def set_number(page, elem_id: str, value):
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")


def ask(page, question: str):
    page.locator("#question textarea").fill(question)
    page.locator("#question textarea").press("Enter")


def wait_for_answer(page, chat: str):
    """The finished answer: the page adds the list of unsupported terms (or the cut note) when it ends."""
    page.locator(f"#{chat} .message.bot small").first.wait_for(timeout=60_000)
    return page.locator(f"#{chat} .message.bot").last


def watch_answers(page, chat: str):
    """Records each text the last answer of `chat` shows, in window.seen, as the page changes."""
    page.evaluate("""chat => {
        window.seen = [];
        const root = document.querySelector('#' + chat);
        new MutationObserver(() => {
            const answers = root.querySelectorAll('.message.bot');
            const text = answers.length ? answers[answers.length - 1].innerText : '';
            if (text && window.seen[window.seen.length - 1] !== text) window.seen.push(text);
        }).observe(root, {subtree: true, childList: true, characterData: true});
    }""", chat)


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.slow
def test_page_streams_compares_and_marks_unsupported_terms(browser, tiny_adapter_dir, tiny_model_dir, tuned, fmt,
                                                           tmp_path):
    # What the tiny model answers (greedy), with and without its adapter; half the adapter's terms are supported.
    conversation = [user(QUESTION)]
    [tuned_answer] = generate(tuned, fmt, [conversation], temperature=0, max_new_tokens=ANSWER_TOKENS)
    [base_answer] = generate(load_model(str(tiny_model_dir)), fmt, [conversation], temperature=0,
                             max_new_tokens=ANSWER_TOKENS)
    terms = sorted(key_terms(tuned_answer.text))
    supported = terms[::2]
    article, response = " ".join(supported), "クトゥルフ"
    expected_tuned = unsupported_terms(tuned_answer.text, response, article)
    expected_base = unsupported_terms(base_answer.text, response, article)
    assert supported and expected_tuned and expected_base  # the random model says plenty no support text has

    source_texts, train_file = support_files(tmp_path, article, response)
    server = Page(["--adapter", str(tiny_adapter_dir), "--base_model", str(tiny_model_dir),
                   "--source_texts", str(source_texts), "--train_file", str(train_file)], tmp_path / "app.log")
    try:
        page = browser.new_page(viewport={"width": 1200, "height": 1000})
        page.goto(server.url)
        set_number(page, "temperature", 0)
        set_number(page, "max-new-tokens", ANSWER_TOKENS)

        # A streamed answer: seen growing, then marked where no support text has the term.
        watch_answers(page, "adapter-chat")
        ask(page, QUESTION)
        shown = wait_for_answer(page, "adapter-chat")
        seen = page.evaluate("window.seen")
        growing = [text for text in seen[:-1] if squeeze(tuned_answer.text).startswith(squeeze(text))]
        assert len(set(growing)) >= 3, seen
        assert squeeze(shown.inner_text()).startswith(squeeze(tuned_answer.text))
        assert {normalize(mark) for mark in shown.locator("mark.unsupported").all_inner_texts()} == expected_tuned
        assert page.locator("#question textarea").input_value() == ""

        # Compare: the same question, answered by the base (adapter disabled) and by the adapter, side by side.
        page.locator("#compare input").check()
        page.locator("#base-chat").wait_for(state="visible")
        ask(page, QUESTION)
        shown_base = wait_for_answer(page, "base-chat")
        shown_tuned = wait_for_answer(page, "adapter-chat")
        assert page.locator("#base-chat .message.bot").count() == page.locator("#adapter-chat .message.bot").count() == 1
        assert squeeze(shown_base.inner_text()).startswith(squeeze(base_answer.text))
        assert squeeze(shown_tuned.inner_text()).startswith(squeeze(tuned_answer.text))
        assert {normalize(mark) for mark in shown_base.locator("mark.unsupported").all_inner_texts()} == expected_base
        legend = page.locator("#legend").inner_text()
        assert "appear nowhere in the material the adapter learned from" in legend and "not thereby true" in legend
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.wait_for_timeout(1000)  # the chats scroll to their ends as the last update settles; then show the tops
        page.evaluate("() => document.querySelectorAll('.bubble-wrap').forEach(chat => chat.scrollTop = 0)")
        page.screenshot(path=str(ARTIFACTS / "chat_page.png"), full_page=True)

        # An empty question is answered by a message in the page.
        ask(page, "   ")
        page.get_by_text("Type a question first").wait_for(timeout=30_000)
    finally:
        server.stop()
    log = (tmp_path / "app.log").read_text()  # our lines and real warnings only, and our own --share hint
    assert "start app.py with --share" in log and "share=True" not in log
    assert "gemm_4bit_forward" not in log and "FutureWarning" not in log, log


@pytest.mark.slow
def test_page_explains_a_folder_that_is_not_an_adapter(browser, tiny_model_dir, tmp_path):
    server = Page(["--adapter", str(tiny_model_dir)], tmp_path / "app.log")
    try:
        assert "no adapter_config.json" in (tmp_path / "app.log").read_text()
        page = browser.new_page()
        page.goto(server.url)
        assert "no adapter_config.json" in page.locator("#status").inner_text()
        ask(page, QUESTION)
        page.wait_for_timeout(1000)
        assert page.locator("#adapter-chat .message.bot").count() == 0
        assert "no adapter_config.json" in page.locator("#status").inner_text()
        assert "Traceback" not in (tmp_path / "app.log").read_text()
    finally:
        server.stop()
