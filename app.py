"""A chat page for the fine-tuned model (Gradio) that marks the words its answers may have made up.

    # on your machine: open http://127.0.0.1:7860
    python app.py --adapter output/cthulhu-mistral-7b-lora --load_in_8bit
    # open book ticked from the start: answers from passages retrieved from data/source_texts.jsonl, with sources
    python app.py --adapter output/cthulhu-mistral-7b-lora --load_in_8bit --open_book
    # on Colab: --share prints a public gradio.live link (Colab's own localhost is not reachable)
    python app.py --adapter output/cthulhu-mistral-7b-lora --load_in_8bit --share
    # as a Hugging Face Space, which runs `python app.py` with no arguments
    CTHULHU_ADAPTER=<user>/<adapter> CTHULHU_APP_ARGS="--load_in_8bit" python app.py

Answers are streamed by the same code as generate.py (cthulhu_sft/inference.py), from the exact training
prompt: the conversation so far, encoded as mistral-common does. Each column keeps its own history.

Compare: with the box ticked, the same question is also answered by the base model, i.e. the same loaded
model with the adapter disabled (PEFT's disable_adapter), so memory holds one copy of the base.

Open book: with the box ticked, each question's top --top_k passages of the source texts (cthulhu_sft/retrieval.py,
BM25; the index is built once and cached beside the file) go into its user turn, numbered, and the model is asked
to answer from them citing [1], [2]. Under the answer the page lists the passages it was shown, the cited ones
marked, each linked to the Wikipedia revision that was crawled, with its CC BY-SA 4.0 attribution. The history
keeps each turn as the model saw it. The box is off (and greyed) when there are no source texts; --open_book
ticks it at start and stops the start when they are missing.

Support marking: key terms (cthulhu_sft/metrics.py, as evaluate.py counts them) of an answer that appear
nowhere in the support texts are marked. The support texts are the crawled articles (--source_texts) and the
adapter's training answers (--train_file), read once at start. A marked term is absent from what the adapter
learned from; an unmarked one is not thereby true.

Errors: bad arguments and unreadable support files stop the start with one line and exit code 2, before any
model loads. A model that cannot be loaded (an adapter folder without adapter_config.json, a base that is
missing, gated or offline) is reported in the page, which then answers every question with that message, so
a Space shows the reason instead of a crash; the same line goes to stderr.
"""

import html
import os
import re
import shlex
import sys
import threading
import traceback
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no calls home at start

from cthulhu_sft.config import (  # noqa: E402
    SOURCE_TEXTS,
    AdapterArguments,
    DecodingArguments,
    LoadArguments,
    OpenBookArguments,
    parse_script_args,
    sft_defaults,
)
from cthulhu_sft.data import DataError, load_records  # noqa: E402
from cthulhu_sft.evaluation import read_source_texts  # noqa: E402
from cthulhu_sft.inference import (  # noqa: E402
    load_format,
    load_model,
    model_location_problem,
    resolve_base,
    stream_answer,
)
from cthulhu_sft.metrics import KANJI, is_japanese, key_terms, normalize, unsupported_terms  # noqa: E402
from cthulhu_sft.retrieval import open_book_turn, open_retriever, parse_citations, revision_url  # noqa: E402

ADAPTER_VARIABLE = "CTHULHU_ADAPTER"  # the adapter's Hub id on a Space, where no arguments can be given
ARGS_VARIABLE = "CTHULHU_APP_ARGS"  # further arguments on a Space, e.g. "--load_in_8bit"
MAX_SLIDER_TOKENS = 4096
CHATBOT = dict(height=420, group_consecutive_messages=False, buttons=["copy", "copy_all"])  # no "share" to the Hub
UPLOAD_ROUTE = "/gradio_api/upload"  # Gradio's file upload endpoint, which this page refuses (NoUploads)
CSS = ("mark.unsupported { background: #ffd5cc; color: inherit; border-bottom: 2px solid #d9381e; padding: 0 1px; }\n"
       ".sources li.cited { font-weight: bold; }")
LICENSE_URL = "https://creativecommons.org/licenses/by-sa/4.0/deed.ja"  # the crawled articles' licence (CC BY-SA 4.0)


@dataclass
class AppArguments:
    source_texts: str | None = field(default=None, metadata={
        "help": f"JSONL of {{'title', 'text'}}: the crawled articles (default: {SOURCE_TEXTS}, skipped with a note "
                "if absent)"})
    train_file: str | None = field(default=None, metadata={
        "help": "the adapter's training data, whose answers count as support (default: train_file in the adapter "
                "folder's config.yaml, else sft_config.yaml's; skipped with a note if absent)"})
    port: int | None = field(default=None, metadata={"help": "port (default: 7860, or the next free one)"})
    share: bool = field(default=False, metadata={"help": "also serve on a public gradio.live link (Colab)"})


def parse_args(argv: list[str] | None = None):
    """The command line (after $CTHULHU_APP_ARGS); support texts are read here, so bad ones stop the start. The
    decoding flags (--temperature, --top_p, --max_new_tokens, --repetition_penalty, --seed) set the page's
    starting values."""
    argv = shlex.split(os.environ.get(ARGS_VARIABLE, "")) + (sys.argv[1:] if argv is None else argv)
    parser, args = parse_script_args(
        (AdapterArguments, LoadArguments, DecodingArguments, OpenBookArguments, AppArguments), argv, __doc__)
    args.adapter = args.adapter or os.environ.get(ADAPTER_VARIABLE)

    # Everything that can be checked without a model is checked here, before minutes of loading.
    if not args.adapter:
        parser.error(f"give --adapter (a folder or Hub id) or set ${ADAPTER_VARIABLE}")
    if problem := DecodingArguments.problem(args) or OpenBookArguments.problem(args):
        parser.error(problem)
    if args.port is not None and not 0 < args.port < 65536:
        parser.error(f"--port {args.port}: not a port number")
    try:
        source_texts, train_file = support_files(args)
        args.support = read_support(source_texts, train_file)
        args.retriever = open_book_retriever(source_texts, args.open_book)
    except DataError as error:
        parser.error(str(error))
    return args


def open_book_retriever(source_texts: str | None, required: bool):
    """The retriever of the source texts (built once, then cached beside them), or None without them; with
    `required` (--open_book), their absence is an error saying how to make them."""
    if source_texts is None:
        if required:
            raise DataError(f"--open_book: {SOURCE_TEXTS} not found; it retrieves from the crawled articles, which "
                            "`python prepare_data.py` writes (or give --source_texts FILE)")
        print("note: the open-book box is off: it needs the crawled articles (`python prepare_data.py`)",
              file=sys.stderr)
        return None
    retriever = open_retriever(source_texts)
    print(f"Open book: {len(retriever.passages)} passages of {len(retriever.articles)} articles in {source_texts}",
          file=sys.stderr, flush=True)
    return retriever


def support_files(args) -> tuple[str | None, str | None]:
    """The source-texts and training files to read: those given, else the defaults that exist (with a note)."""
    files = []
    defaults = ((args.source_texts, SOURCE_TEXTS, "article texts"),
                (args.train_file, adapter_train_file(args.adapter), "training answers"))
    for given, default, what in defaults:
        if given or os.path.isfile(default):
            files.append(given or default)
        else:
            print(f"note: {default} not found: the {what} are not used to mark unsupported terms", file=sys.stderr)
            files.append(None)
    return tuple(files)


def adapter_train_file(adapter: str) -> str:
    """The train_file recorded in the adapter folder's config.yaml (train_sft.py writes it), else sft_config.yaml's."""
    import yaml

    config = Path(adapter) / "config.yaml"
    recorded = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("train_file") if config.is_file() else None
    return recorded or sft_defaults()["train_file"]


@dataclass
class Support:
    """The support texts (one string per file) and, for the legend, what they are."""

    texts: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()

    def unsupported(self, answer: str) -> set[str]:
        """The answer's key terms that no support text supports (metrics.unsupported_terms): all, without texts."""
        return unsupported_terms(answer, *self.texts)


# Joins a file's texts. metrics looks names up in the text with whitespace removed; a character that no key
# term holds keeps a name from being found across the end of one text and the start of the next.
TEXT_BOUNDARY = "\n¶\n"


def read_support(source_texts: str | None, train_file: str | None) -> Support:
    """Reads the article texts and the training answers; raises DataError naming file, line and field."""
    texts, sources = [], []
    if source_texts:
        articles = list(read_source_texts(source_texts).values())
        texts.append(TEXT_BOUNDARY.join(articles))
        sources.append(f"{source_texts}（記事 {len(articles)} 件の本文）")
    if train_file:
        responses = [record["response"] for record in load_records(train_file)]
        texts.append(TEXT_BOUNDARY.join(responses))
        sources.append(f"{train_file}（学習の回答 {len(responses)} 件）")
    support = Support(tuple(texts), tuple(sources))
    support.unsupported("zz")  # metrics prepares (and caches) each text's searchable form now, not at the first answer
    return support


def marked_html(answer: str, unsupported: set[str]) -> str:
    """The answer as HTML-escaped text with every whole occurrence of an unsupported term in <mark>.

    Terms are normalised (metrics.normalize: NFKC, lower case), so occurrences are found in the answer
    normalised character by character, mapped back to the original characters. An occurrence of a katakana,
    Latin or number term counts only where the text around it yields that very term, so クトゥ is not marked
    inside クトゥルフ nor 19 inside 1926; a kanji proper noun counts wherever it occurs. A term that cannot be
    located this way is still listed under the answer.
    """
    pieces = [normalize(character) for character in answer]
    normalized = "".join(pieces)
    owner = [index for index, piece in enumerate(pieces) for _ in piece]  # normalised offset -> answer index
    taken = [False] * len(answer)
    spans = []
    for term in sorted(unsupported, key=len, reverse=True):
        for match in re.finditer(re.escape(term), normalized):
            start, end = owner[match.start()], owner[match.end() - 1] + 1
            context = normalized[max(match.start() - 1, 0) : match.end() + 1]
            whole = KANJI.search(term) or term in key_terms(context)  # Sudachi needs more context than this
            if whole and not any(taken[start:end]):
                taken[start:end] = [True] * (end - start)
                spans.append((start, end))
    parts, position = [], 0
    for start, end in sorted(spans):
        parts.append(html.escape(answer[position:start]))
        parts.append(f'<mark class="unsupported">{html.escape(answer[start:end])}</mark>')
        position = end
    parts.append(html.escape(answer[position:]))
    return "".join(parts)


def shown_answer(answer, support: Support) -> str:
    """The finished answer as the page shows it: marked, with the unsupported terms listed and a cut noted."""
    unsupported = support.unsupported(answer.text)
    shown = marked_html(answer.text, unsupported)
    if unsupported:
        terms = "、".join(html.escape(term) for term in sorted(unsupported))
        shown += f"\n\n<small>資料にない語 / not in the support texts: {terms}</small>"
        if not is_japanese(answer.text):  # evaluate.py does not count these words as claims
            shown += ("\n\n<small>日本語ではない回答: ラテン文字の語の印は、多くが言語の違いによるものです / "
                      "not a Japanese answer: marks on Latin words mostly reflect the language.</small>")
    if not answer.stopped:
        shown += "\n\n<small>（最大新規トークン数で打ち切り / cut at max new tokens）</small>"
    return shown


def sources_html(shown: list, answer_text: str) -> str:
    """The passages an open-book answer was given, numbered as in its prompt, the cited ones marked (class "cited"),
    each linked to its Wikipedia revision, with the CC BY-SA 4.0 attribution. One HTML block (no blank line), so
    that the chat's Markdown leaves it alone; every title and section is escaped."""
    if not shown:
        return "<small>資料 / sources: なし（質問と語を共有する資料がありません / no passage shares a word with the question）</small>"
    cited = set(parse_citations(answer_text))
    items = []
    for number, hit in enumerate(shown, start=1):
        heading = html.escape(hit.heading)
        url = revision_url(hit.url, hit.revid)
        link = f'<a href="{html.escape(url)}" target="_blank">{heading}</a>' if url.startswith(("https://", "http://")) \
            else heading
        mark = "引用 / cited " if number in cited else ""
        version = f"(版 {hit.revid})" if hit.revid is not None else ""
        items.append(
            f'<li class="source{" cited" if number in cited else ""}">[{number}] {mark}{link}<br>'
            f"<small>出典: Wikipedia日本語版『{html.escape(hit.title)}』{version}、"
            f'<a href="{LICENSE_URL}" target="_blank">CC BY-SA 4.0</a></small></li>'
        )
    return ('<div class="sources"><small>回答に渡した資料 / sources shown to the model（太字は回答が引用したもの / '
            f'bold: cited）</small><ul>{"".join(items)}</ul></div>')


def empty_chats() -> dict:
    """Per column: `history`, the conversation as the model sees it, and `shown`, the Chatbot's messages."""
    return {side: {"history": [], "shown": []} for side in ("adapter", "base")}


class ChatApp:
    """The page's state and handlers; `problem` is set when the model could not be loaded."""

    def __init__(self, model, fmt, support: Support, title: str, decoding: DecodingArguments,
                 problem: str | None = None, retriever=None, book: OpenBookArguments | None = None):
        self.model, self.fmt, self.support, self.title = model, fmt, support, title
        self.decoding, self.problem = decoding, problem
        self.retriever, self.book = retriever, book or OpenBookArguments()
        self.lock = threading.Lock()  # one model: one answer at a time, whatever gradio's queue does

    def respond(self, question: str, chats: dict, compare: bool, temperature: float, top_p: float,
                max_new_tokens: float, open_book: bool = False):
        """Streams the answers to `question`: the adapter's, then (compare) the base's; open book, both from the
        same retrieved passages. Yields the outputs (adapter chat, base chat, chats, status, question box)."""
        question = (question or "").strip()
        problem = self.problem or ("" if question else "質問を入力してください。 / Type a question first.")
        if open_book and self.retriever is None:
            problem = problem or "資料（記事本文）がないのでオープンブックは使えません / open book needs the source texts"
        if problem:
            yield self._outputs(chats, problem, question)
            return
        turn, shown = question, []
        if open_book:
            turn, shown = open_book_turn(self.retriever, question, self.fmt, top_k=self.book.top_k)
        options = dict(
            temperature=float(temperature), top_p=float(top_p), max_new_tokens=int(max_new_tokens),
            repetition_penalty=self.decoding.repetition_penalty, seed=None,
        )
        with self.lock:
            for side in ("adapter", "base") if compare else ("adapter",):
                chat = chats[side]
                conversation = chat["history"] + [{"role": "user", "content": turn}]
                chat["shown"] += [{"role": "user", "content": html.escape(question)},
                                  {"role": "assistant", "content": ""}]
                stream = stream_answer(self.model, self.fmt, conversation, side == "adapter", **options)
                try:
                    # closing(): when gradio cancels this handler (clear, stop), generation stops too
                    with closing(stream):
                        for text, answer in stream:
                            if answer is None:
                                content = html.escape(text)
                            else:
                                content = shown_answer(answer, self.support)
                                if open_book:
                                    content += "\n\n" + sources_html(shown, answer.text)
                            chat["shown"][-1]["content"] = content
                            yield self._outputs(chats, "", "")
                except Exception as error:  # shown in the page (e.g. out of memory); the details go to the log
                    traceback.print_exc()
                    chat["shown"] = chat["shown"][:-2]
                    yield self._outputs(chats, f"生成に失敗しました / generation failed: {type(error).__name__}: {error}", question)
                    return
                chat["history"] = conversation + [{"role": "assistant", "content": answer.text}]

    def _outputs(self, chats: dict, status: str, question: str):
        return chats["adapter"]["shown"], chats["base"]["shown"], chats, status_markdown(status), question

    def restart(self, compare: bool):
        """Clears the conversation: the clear buttons, and a switch of compare, so that both columns hold the same
        questions."""
        import gradio as gr

        chats = empty_chats()
        return [], gr.Chatbot(value=[], visible=bool(compare)), chats, status_markdown(self.problem or ""), ""

    def page(self):
        import gradio as gr

        with gr.Blocks(title="cthulhu-sft chat", analytics_enabled=False) as page:
            gr.Markdown(f"## cthulhu-sft チャット / chat\n{self.title}")
            status = gr.Markdown(status_markdown(self.problem or ""), elem_id="status")
            with gr.Row():
                base_chat = gr.Chatbot(label="ベースモデル（アダプタ無効） / base, adapter disabled", visible=False,
                                       elem_id="base-chat", **CHATBOT)
                adapter_chat = gr.Chatbot(label="アダプタ / adapter", elem_id="adapter-chat", **CHATBOT)
            question = gr.Textbox(label="質問 / question", placeholder="例: ルルイエとは何ですか？", elem_id="question",
                                  lines=1)
            with gr.Row():
                send = gr.Button("送信 / send", variant="primary", elem_id="send")
                clear = gr.Button("クリア / clear", elem_id="clear")
            compare = gr.Checkbox(label="比較: ベースモデル（アダプタ無効）の答えも並べる / compare with the base model",
                                  elem_id="compare")
            open_book = gr.Checkbox(
                label="オープンブック: 記事から探した資料を読んで答え、出典を示す / open book: answer from retrieved passages",
                value=self.book.open_book and self.retriever is not None, interactive=self.retriever is not None,
                elem_id="open-book",
                info=f"質問ごとに上位 {self.book.top_k} 件の資料を渡します / the top {self.book.top_k} passages per question"
                if self.retriever is not None else
                f"記事本文（{SOURCE_TEXTS}）がないので使えません。`python prepare_data.py` で作れます / "
                "needs the crawled articles",
            )
            with gr.Accordion("生成の設定 / generation", open=True):
                with gr.Row():
                    temperature = gr.Slider(0, 2, value=self.decoding.temperature, step=0.05, elem_id="temperature",
                                            label="temperature（0 は貪欲法 / 0 is greedy）")
                    top_p = gr.Slider(0.05, 1, value=self.decoding.top_p, step=0.05, label="top-p", elem_id="top-p")
                    max_new_tokens = gr.Slider(1, MAX_SLIDER_TOKENS, value=self.decoding.max_new_tokens, step=1,
                                               label="最大新規トークン数 / max new tokens", elem_id="max-new-tokens")
            gr.Markdown(legend(self.support), elem_id="legend")
            chats = gr.State(empty_chats())

            outputs = [adapter_chat, base_chat, chats, status, question]
            answering = gr.on(
                [question.submit, send.click], self.respond,
                [question, chats, compare, temperature, top_p, max_new_tokens, open_book], outputs,
                show_progress="minimal",
            )
            # The chatbots' own clear icons too: the histories must never differ from what the page shows.
            gr.on([clear.click, compare.change, adapter_chat.clear, base_chat.clear], self.restart, compare, outputs,
                  cancels=[answering])
        return page


def status_markdown(message: str) -> str:
    return f"**{message}**" if message else ""


def legend(support: Support) -> str:
    """The Markdown under the chats; the file names in it are escaped (a name is the user's, not page markup)."""
    sources = "、".join(markdown_text(source) for source in support.sources) or (
        "（なし: 記事本文も学習データも見つからないので、すべてのキーワードに印が付きます。"
        "`--source_texts` と `--train_file` で指定してください）"
    )
    return (
        '**<mark class="unsupported">印</mark>の語**は、回答のキーワード（カタカナ語・ラテン文字の語・数字・'
        f"漢字の固有名詞。evaluate.py と同じ定義）のうち、次の資料のどこにも出てこないものです: {sources}。"
        "アダプタが学んだ資料にない語なので、作り話の手がかりになります。"
        "ただし印は誤りの証明ではなく（言い換えや一般的な知識かもしれません）、"
        "印のない語が正しいとも限りません（資料にある語を誤って組み合わせることもあります）。\n\n"
        "*Marked terms appear nowhere in the material the adapter learned from: a hint of invention, not proof; "
        "an unmarked term is not thereby true.*"
    )


def markdown_text(text: str) -> str:
    """`text` shown as its own characters in Gradio's Markdown: Markdown's punctuation backslash-escaped (a name with
    two underscores would turn italic), then HTML escaped (a name is the user's, never the page's markup)."""
    return html.escape(re.sub(r"([\\`*_\[\]#!|~])", r"\\\1", text))


def load(args):
    """(model, fmt, problem): the model and format, or None, None and one line saying why they cannot load."""
    problem = model_location_problem(args.adapter, "--adapter", adapter=True) or (
        args.base_model and model_location_problem(args.base_model, "--base_model")
    )
    if problem:
        return None, None, problem
    base = args.base_model or "the adapter's base"
    try:
        base = resolve_base(args.base_model, args.adapter, args.adapter_revision)
        print(f"Loading {base} + adapter {args.adapter}", file=sys.stderr, flush=True)
        fmt = load_format(base, args.adapter, args.revision, args.adapter_revision)
        model = load_model(
            base, args.adapter, load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit, dtype=args.dtype,
            revision=args.revision, adapter_revision=args.adapter_revision,
        )
    except Exception as error:  # any failure to load is shown in the page rather than as a crash
        first_line = (str(error).strip().splitlines() or [""])[0]
        return None, None, f"cannot load the model ({base} + {args.adapter}): {type(error).__name__}: {first_line}"
    return model, fmt, None


def main(args) -> None:
    from transformers import set_seed

    model, fmt, problem = load(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr, flush=True)
    set_seed(args.seed)
    title = f"アダプタ / adapter: `{args.adapter}`" + (f" · ベース / base: `{args.base_model}`" if args.base_model else "")
    decoding = DecodingArguments(args.temperature, args.top_p, args.repetition_penalty, args.max_new_tokens, args.seed)
    app = ChatApp(model, fmt, args.support, title, decoding, problem, retriever=args.retriever,
                  book=OpenBookArguments(args.open_book, args.top_k))
    serve(app.page(), args.port, args.share)


class NoUploads:
    """ASGI middleware that refuses Gradio's file upload endpoint: the page has no file input, and with --share
    anyone holding the link could otherwise store files in Gradio's upload folder on this machine."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].rstrip("/").endswith(UPLOAD_ROUTE):
            from starlette.responses import PlainTextResponse

            await PlainTextResponse("this page takes no uploads", status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def serve(page, port: int | None, share: bool, block: bool = True):
    """Starts the page (without Gradio's upload endpoint) and prints where it is, with this script's --share hint
    in place of Gradio's advice to edit launch(); returns once stopped (or at once, with block False)."""
    from starlette.middleware import Middleware

    page.queue().launch(server_port=port, share=share, footer_links=[], css=CSS, quiet=True, prevent_thread_lock=True,
                        app_kwargs={"middleware": [Middleware(NoUploads)]})
    print(f"* Running on local URL:  {page.local_url}", flush=True)
    if page.share_url:
        print(f"* Running on public URL: {page.share_url} (anyone with this link can use the page until it stops)",
              flush=True)
    elif not share:
        print("* For a public link (e.g. on Colab), start app.py with --share", flush=True)
    if block:
        page.block_thread()
    return page


if __name__ == "__main__":
    main(parse_args())
