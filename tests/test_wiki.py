"""The MediaWiki client against a real HTTP server on 127.0.0.1 (tests/mediawiki_server.py)."""

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from mediawiki_server import (
    ARTICLES_DEPTH_0,
    ARTICLES_DEPTH_1,
    ARTICLES_DEPTH_2,
    LONG_TITLE,
    STOCK_JAPANESE,
    MediaWikiServer,
    Wiki,
    cthulhu_wiki,
)

import prepare_data
from cthulhu_sft.files import write_temporary
from cthulhu_sft.wiki import (
    CACHE_VERSION,
    DEFAULT_USER_AGENT,
    MAX_IDLE_ANSWERS,
    MAX_LISTING_REQUESTS,
    MAX_PAGE_CHARS,
    Cache,
    WikiClient,
    WikiError,
    crawl_category_tree,
    fetch_pages,
    page_aliases,
    safe_filename,
    site_key,
)

ROOT = "Category:クトゥルフ神話"


def fast_client(server, **kwargs) -> WikiClient:
    return WikiClient(server.url, interval=0, backoff_factor=0, **kwargs)


class Progress:
    """What fetch_pages uses of tqdm."""

    def __init__(self):
        self.count = 0

    def update(self, count):
        self.count += count


def record(title: str, text: str) -> dict:
    """A page record as fetch_pages caches it."""
    return {"title": title, "ns": 0, "pageid": 1, "revid": 10, "url": None, "text": text, "aliases": [],
            "fetched": "2026-01-01T00:00:00Z"}


def listings(server) -> list[dict]:
    return [r["params"] for r in server.requests if r["params"].get("list") == "categorymembers"]


@pytest.fixture
def server():
    with MediaWikiServer(cthulhu_wiki()) as server:
        yield server


@pytest.fixture
def cache(tmp_path, server):
    return Cache(tmp_path / "cache", server.url)


# ---------------------------------------------------------------------------------------------------
# Crawl


@pytest.mark.parametrize("depth, expected", [(0, ARTICLES_DEPTH_0), (1, ARTICLES_DEPTH_1), (2, ARTICLES_DEPTH_2)])
def test_category_crawl_lists_each_main_namespace_article_once_to_the_given_depth(server, cache, depth, expected):
    articles, categories = crawl_category_tree(fast_client(server), cache, ROOT, depth)
    assert len(articles) == len(set(articles))  # クトゥルフ is in two categories
    assert set(articles) == expected  # no Template:, no categories, ハスター only at depth 2
    assert len(categories) == len(set(categories)) == [1, 3, 4][depth]  # the cycle back to the root is not followed
    assert any("cmcontinue" in params for params in listings(server))  # 2 members per answer: continued


@pytest.mark.parametrize("root", ["Category:クトゥルフ神話", "カテゴリ:クトゥルフ神話", "category:クトゥルフ神話", "クトゥルフ神話"])
def test_a_category_is_one_category_whatever_namespace_prefix_the_user_typed(tmp_path, root):
    """A stock Japanese MediaWiki calls the root カテゴリ:クトゥルフ神話; the cycle brings it back under that name."""
    with MediaWikiServer(cthulhu_wiki(STOCK_JAPANESE), members_per_response=500) as server:
        articles, categories = crawl_category_tree(fast_client(server), Cache(tmp_path, server.url), root, 2)
    assert categories == ["カテゴリ:クトゥルフ神話", "カテゴリ:クトゥルフ神話の作品", "カテゴリ:クトゥルフ神話の神格", "カテゴリ:旧支配者"]
    assert len(listings(server)) == 4  # the root was listed once
    assert sorted(articles) == sorted(ARTICLES_DEPTH_2)


def test_category_crawl_continues_through_an_answer_with_no_members(tmp_path):
    with MediaWikiServer(cthulhu_wiki(), empty_first_page=True) as server:
        articles, _ = crawl_category_tree(fast_client(server), Cache(tmp_path, server.url), ROOT, 0)
    assert set(articles) == ARTICLES_DEPTH_0


def test_a_category_listing_cut_short_resumes_from_its_continuation(tmp_path):
    with MediaWikiServer(cthulhu_wiki(), members_per_response=1) as server:
        server.fail_after = 3
        with pytest.raises(WikiError):
            crawl_category_tree(fast_client(server, retries=0), Cache(tmp_path, server.url), ROOT, 0)
        server.fail_after = None
        first_resumed = len(server.requests)
        articles, categories = crawl_category_tree(fast_client(server), Cache(tmp_path, server.url), ROOT, 0)
    assert sorted(articles) == sorted(ARTICLES_DEPTH_0) and categories == [ROOT]
    assert server.params_of(first_resumed)["cmcontinue"] == "page|3"  # not from the start again


@pytest.mark.parametrize("category, message", [
    ("Category:空の分類", "listing of Category:空の分類 is empty"),
    ("Category:存在しない分類", "listing of Category:存在しない分類 is empty"),
    ("Category:分類だけの分類", "Category:分類だけの分類 and its subcategories to depth 0 list no articles"),
])
def test_a_category_without_articles_is_an_error_that_names_it(tmp_path, category, message):
    wiki = cthulhu_wiki()
    wiki.add_category("Category:空の分類")
    wiki.add_category("Category:分類だけの分類")
    wiki.add_category("Category:空の分類", parents=["Category:分類だけの分類"])
    with MediaWikiServer(wiki) as server, pytest.raises(WikiError, match=message):
        crawl_category_tree(fast_client(server), Cache(tmp_path, server.url), category, 0)


def test_a_server_that_never_stops_continuing_a_listing_is_stopped_with_an_error_naming_the_category(tmp_path):
    with MediaWikiServer(cthulhu_wiki(STOCK_JAPANESE), endless_continuation=True) as server:
        cache = Cache(tmp_path, server.url)
        with pytest.raises(WikiError, match="listing of カテゴリ:クトゥルフ神話 did not end"):
            crawl_category_tree(fast_client(server), cache, ROOT, 1)
    assert len(server.requests) == MAX_IDLE_ANSWERS


def test_a_listing_is_capped_even_when_every_answer_brings_a_member(tmp_path):
    wiki = Wiki()
    wiki.add_category("Category:大きな分類")
    for number in range(MAX_LISTING_REQUESTS + 1):
        wiki.add_page(f"項目{number:03d}", extract="本文。", categories=["Category:大きな分類"])
    with MediaWikiServer(wiki, members_per_response=1) as server, pytest.raises(WikiError, match=f"after {MAX_LISTING_REQUESTS} answers"):
        crawl_category_tree(fast_client(server), Cache(tmp_path, server.url), "Category:大きな分類", 0)
    assert len(server.requests) == MAX_LISTING_REQUESTS


def test_requests_carry_user_agent_maxlag_formatversion_and_accept_gzip(server, cache):
    crawl_category_tree(fast_client(server), cache, ROOT, 0)
    request = server.requests[0]
    assert request["headers"]["User-Agent"] == DEFAULT_USER_AGENT
    assert "github.com" in DEFAULT_USER_AGENT and "@" in DEFAULT_USER_AGENT  # contact, as Wikimedia asks
    assert "gzip" in request["headers"]["Accept-Encoding"]
    assert request["params"]["maxlag"] == "5"
    assert request["params"]["formatversion"] == "2" and request["params"]["format"] == "json"


def test_user_agent_can_be_overridden(server, cache):
    crawl_category_tree(fast_client(server, user_agent="MyBot/1.0 (me@example.org)"), cache, ROOT, 0)
    assert server.requests[0]["headers"]["User-Agent"] == "MyBot/1.0 (me@example.org)"


# ---------------------------------------------------------------------------------------------------
# Pages


def test_extracts_are_continued_one_page_per_answer_and_redirects_resolve_to_one_page(server, cache):
    titles = ["クトゥルフ", "Cthulhu", "インスマウスの影", "インスマスを覆う影", "存在しないページ", "A[b]", "ルルイエ"]
    pages = fetch_pages(fast_client(server), cache, titles)
    assert pages["Cthulhu"]["title"] == pages["クトゥルフ"]["title"] == "クトゥルフ"
    assert pages["インスマウスの影"]["title"] == "インスマスを覆う影"
    assert pages["存在しないページ"]["missing"] is True and pages["A[b]"]["missing"] is True
    real = {page["title"] for page in pages.values() if not page.get("missing")}
    assert real == {"クトゥルフ", "インスマスを覆う影", "ルルイエ"}
    assert sorted(server.extracts_served) == sorted(real)  # each page's text fetched once
    assert len(server.requests) == len(real)  # one extract per answer, nothing else needed
    assert any("excontinue" in r["params"] for r in server.requests)
    for title in real:
        page = next(p for p in pages.values() if p.get("title") == title)
        assert page["text"] and page["revid"] and page["url"].startswith("https://ja.wikipedia.org/wiki/")
    assert "== 概要 ==" in pages["クトゥルフ"]["text"]


def test_a_redirect_to_a_page_of_an_earlier_batch_does_not_fetch_that_page_again(tmp_path):
    wiki = Wiki()
    titles = [f"項目{i:02d}" for i in range(60)]  # more than the 50 titles of one request
    for title in titles:
        wiki.add_page(title, extract=f"{title}についての本文である。")
    for number in range(8):
        wiki.add_redirect(f"別名{number}", f"項目{number:02d}")
    requested = titles[:51] + [f"別名{n}" for n in range(8)] + titles[51:]
    with MediaWikiServer(wiki) as server:
        client, progress = fast_client(server), Progress()
        # The first answer of a batch tells where its redirects lead (and sends one extract, here 項目50's).
        pages = fetch_pages(client, Cache(tmp_path, server.url), requested, progress)
    assert sorted(server.extracts_served) == titles  # each page's text exactly once
    assert progress.count == len(requested)  # each requested title counted once
    assert all(pages[f"別名{n}"]["title"] == f"項目{n:02d}" for n in range(8))
    assert client.requests == 60  # one per page: skipping the known pages cost no extra request


def test_a_server_that_never_sends_the_text_is_stopped_with_an_error_naming_the_pages(tmp_path):
    with MediaWikiServer(cthulhu_wiki(), endless_continuation=True) as server:
        with pytest.raises(WikiError, match="without the text of a page.*ルルイエ"):
            fetch_pages(fast_client(server), Cache(tmp_path, server.url), ["ルルイエ", "クトゥルフ"])
    assert len(server.requests) == 1 + MAX_IDLE_ANSWERS  # the first answer brought クトゥルフ's redirects


def test_a_wiki_without_textextracts_is_a_clear_error(tmp_path):
    with MediaWikiServer(cthulhu_wiki(), extracts=False) as server, pytest.raises(WikiError, match="no TextExtracts"):
        fetch_pages(fast_client(server), Cache(tmp_path, server.url), ["ルルイエ"])


# ---------------------------------------------------------------------------------------------------
# Faults


def test_maxlag_429_503_and_dropped_connections_are_retried(server, cache):
    server.faults.extend(["maxlag", "429", "503html", "drop", "maxlag503"])
    client = fast_client(server)
    pages = fetch_pages(client, cache, ["クトゥルフ", "ルルイエ"])
    assert pages["クトゥルフ"]["text"] and pages["ルルイエ"]["text"]
    assert client.retries == 5 and client.requests == len(server.requests) == 7


def test_retry_after_of_a_maxlag_error_is_honoured(tmp_path):
    with MediaWikiServer(cthulhu_wiki(), retry_after="1") as server:
        server.faults.append("maxlag")
        fetch_pages(fast_client(server), Cache(tmp_path, server.url), ["ルルイエ"])
    first, second = server.requests[0]["time"], server.requests[1]["time"]
    assert second - first >= 0.95


def test_requests_are_spaced_by_the_polite_interval(server, cache):
    client = WikiClient(server.url, interval=0.2, backoff_factor=0)
    fetch_pages(client, cache, ["クトゥルフ", "ルルイエ", "ネクロノミコン"])
    times = [request["time"] for request in server.requests]
    assert len(times) == 3 and min(b - a for a, b in zip(times, times[1:])) >= 0.18


@pytest.mark.parametrize("fault, message", [("503html", "HTTP 503"), ("maxlag", "maxlag"), ("drop", "no answer")])
def test_retries_running_out_is_a_clear_error_and_fetched_pages_stay_cached(server, cache, fault, message):
    client = fast_client(server, retries=2)
    fetch_pages(client, cache, ["ルルイエ"])
    server.faults.extend([fault] * 10)
    with pytest.raises(WikiError, match=message) as error:
        fetch_pages(client, cache, ["ルルイエ", "クトゥルフ"])
    assert server.url in str(error.value)
    assert len(server.requests) == 1 + 3  # the cached page was not asked again; 1 try + 2 retries
    if fault == "503html":
        assert "Wikimedia Error" in str(error.value)  # the HTML page's title, not its markup
    assert cache.load("pages", "ルルイエ")["text"].startswith("ルルイエは")


@pytest.mark.parametrize("fault, message", [("html200", "not JSON.*api.php"), ("truncate", "connection broke")])
def test_an_html_page_or_a_cut_answer_is_a_clear_error_at_once(server, cache, fault, message):
    """A 200 HTML page is a wrong --api_url, not a passing fault; a body cut mid-way is read outside urllib3's retries."""
    server.faults.append(fault)
    with pytest.raises(WikiError, match=message):
        fetch_pages(fast_client(server), cache, ["ルルイエ"])
    assert len(server.requests) == 1


def test_non_retryable_api_error_is_raised_at_once(server):
    with pytest.raises(WikiError, match="badvalue"):
        fast_client(server).get({"action": "nonsense"})
    assert len(server.requests) == 1


# ---------------------------------------------------------------------------------------------------
# Cache


def test_second_fetch_makes_no_request_and_refresh_fetches_again(server, tmp_path):
    titles = ["クトゥルフ", "Cthulhu", "存在しないページ", LONG_TITLE]
    first = fetch_pages(fast_client(server), Cache(tmp_path, server.url), titles)
    crawl_category_tree(fast_client(server), Cache(tmp_path, server.url), ROOT, 2)
    count, progress = len(server.requests), Progress()
    again = fetch_pages(fast_client(server), Cache(tmp_path, server.url), titles, progress)
    assert progress.count == len(titles)
    crawl_category_tree(fast_client(server), Cache(tmp_path, server.url), ROOT, 2)
    assert len(server.requests) == count
    assert again == first
    fetch_pages(fast_client(server), Cache(tmp_path, server.url, refresh=True), titles)
    assert len(server.requests) > count


def test_cached_pages_carry_title_and_text_and_redirects_name_their_target(server, cache):
    fetch_pages(fast_client(server), cache, ["Cthulhu", "ルルイエ"])
    entries = [json.loads(path.read_text(encoding="utf-8")) for path in (cache.root / "pages").glob("*.json")]
    assert {entry["title"] for entry in entries if "redirect" not in entry} == {"クトゥルフ", "ルルイエ"}
    assert all(entry["text"] for entry in entries if "redirect" not in entry)
    assert [entry["redirect"] for entry in entries if "redirect" in entry] == ["クトゥルフ"]


def test_pages_are_cached_as_they_arrive_so_an_interrupted_batch_resumes(server, tmp_path):
    titles = ["クトゥルフ", "ルルイエ", "ネクロノミコン", "ハスター"]
    server.fail_after = 2  # an outage after two answers
    with pytest.raises(WikiError):
        fetch_pages(fast_client(server, retries=1), Cache(tmp_path, server.url), titles)
    served_before = list(server.extracts_served)
    assert len(served_before) == 2
    server.fail_after = None
    pages = fetch_pages(fast_client(server), Cache(tmp_path, server.url), titles)
    assert all(pages[title]["text"] for title in titles)
    resumed = server.extracts_served[len(served_before):]
    assert sorted(resumed) == sorted(set(titles) - set(served_before))  # nothing fetched twice


def test_temporary_files_that_a_killed_run_left_are_removed_when_the_cache_is_opened(tmp_path):
    cache = Cache(tmp_path, "https://ja.wikipedia.org/w/api.php")
    cache.save("pages", "ルルイエ", record("ルルイエ", "本文"))
    for kind in ("pages", "categories"):  # what a run killed between writing and renaming leaves
        write_temporary(cache.path(kind, "クトゥルフ"), "{")
    assert len(list(cache.root.glob("*/.*.tmp"))) == 2
    cache = Cache(tmp_path, "https://ja.wikipedia.org/w/api.php")
    assert sorted(path.name for path in cache.root.rglob("*")) == ["categories", "pages", safe_filename("ルルイエ")]


@pytest.mark.parametrize("title", ["AC/DC", "Category:クトゥルフ神話", "Dagon (mythos)", LONG_TITLE, ".hidden", "a\\b*c?"])
def test_cache_file_names_are_safe_for_any_title(tmp_path, title):
    name = safe_filename(title)
    assert "/" not in name and "\\" not in name and ":" not in name and not name.startswith(".")
    assert len(name.encode("utf-8")) <= 255
    cache = Cache(tmp_path, "https://ja.wikipedia.org/w/api.php")
    cache.save("pages", title, record(title, "本文"))
    assert cache.load("pages", title)["text"] == "本文"
    assert safe_filename(title) != safe_filename(title + "2")


def test_a_corrupt_cache_file_is_fetched_again(server, tmp_path):
    cache = Cache(tmp_path, server.url)
    fetch_pages(fast_client(server), cache, ["ルルイエ"])
    cache.path("pages", "ルルイエ").write_text('{"key": "ルルイエ", "tex', encoding="utf-8")
    pages = fetch_pages(fast_client(server), cache, ["ルルイエ"])
    assert pages["ルルイエ"]["text"].startswith("ルルイエは") and len(server.requests) == 2
    assert json.loads(cache.path("pages", "ルルイエ").read_text(encoding="utf-8"))["title"] == "ルルイエ"
    assert not [name for name in os.listdir(cache.path("pages", "x").parent) if name.startswith(".")]


def test_cache_is_kept_apart_per_wiki(tmp_path):
    a = Cache(tmp_path, "https://ja.wikipedia.org/w/api.php")
    b = Cache(tmp_path, "http://127.0.0.1:8080/w/api.php")
    a.save("pages", "ルルイエ", record("ルルイエ", "ja"))
    assert b.load("pages", "ルルイエ") is None
    assert a.load("pages", "ルルイエ")["text"] == "ja"


# ---------------------------------------------------------------------------------------------------
# Greedy or slow servers, and no server at all


@pytest.mark.parametrize("fault", ["maxlag503", "429", "maxlag"])
def test_a_server_asking_to_wait_longer_than_the_cap_is_an_error_at_once_that_says_what_it_asked(tmp_path, fault):
    with MediaWikiServer(cthulhu_wiki(), retry_after="100000") as server:
        server.faults.extend([fault] * 3)
        started = time.monotonic()
        with pytest.raises(WikiError, match=r"asks to wait before the next request \(Retry-After: 100000\), longer than the 2 s"):
            fetch_pages(fast_client(server, max_retry_after=2), Cache(tmp_path, server.url), ["ルルイエ"])
    assert time.monotonic() - started < 2 and len(server.requests) == 1


def test_a_wait_within_the_cap_is_waited_and_said(tmp_path, caplog):
    with MediaWikiServer(cthulhu_wiki(), retry_after="1") as server:
        server.faults.append("maxlag503")
        with caplog.at_level("INFO", logger="cthulhu_sft.wiki"):
            pages = fetch_pages(fast_client(server, max_retry_after=2), Cache(tmp_path, server.url), ["ルルイエ"])
    assert pages["ルルイエ"]["text"] and "waiting 1 s, as the server asks (Retry-After)" in caplog.text


@pytest.mark.parametrize("fault", ["trickle", "trickle_all"])
def test_a_server_trickling_its_answer_is_cut_off_at_the_timeout_of_the_whole_request(tmp_path, fault):
    with MediaWikiServer(cthulhu_wiki()) as server:
        server.trickle_delay = 0.3  # each byte comes well within the timeout: only a bound on the whole answer stops it
        server.faults.append(fault)
        started = time.monotonic()
        with pytest.raises(WikiError, match="no complete answer within --timeout 1 s"):
            fetch_pages(fast_client(server, timeout=1), Cache(tmp_path, server.url), ["ルルイエ"])
    assert time.monotonic() - started < 2


def test_an_answer_larger_than_the_bound_is_an_error(server, cache):
    with pytest.raises(WikiError, match="larger than 300 bytes"):
        fetch_pages(fast_client(server, max_bytes=300), cache, ["ルルイエ"])


def closed_port_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/w/api.php"


def test_a_wiki_that_cannot_be_reached_is_said_at_once_without_retries(tmp_path):
    url = closed_port_url()
    client = WikiClient(url, interval=0, backoff_factor=1.0, retries=5)  # retried, these would take 31 s
    started = time.monotonic()
    with pytest.raises(WikiError, match=f"cannot reach {url}: .*refused.*no network, or a wrong --api_url"):
        fetch_pages(client, Cache(tmp_path, url), ["ルルイエ"])
    assert time.monotonic() - started < 2 and client.requests == 1 and client.retries == 0


# ---------------------------------------------------------------------------------------------------
# prepare_data.py's crawl, in-process through its CLI


def prepare(capsys, server_url, tmp_path, tokenizer_dir, *extra) -> tuple[int, str, str]:
    code = prepare_data.main(["--api_url", server_url, "--tokenizer", str(tokenizer_dir), "--max_tokens", "256",
                              "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out"),
                              "--request_interval", "0", "--backoff_factor", "0", *map(str, extra)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_prepare_data_without_network_says_so_at_once_and_offers_no_resume(tmp_path, tokenizer_dir, capsys, caplog):
    started = time.monotonic()
    code, _, stderr = prepare(capsys, closed_port_url(), tmp_path, tokenizer_dir, "--backoff_factor", "1")
    assert code == 1 and time.monotonic() - started < 3
    assert "cannot reach http://127.0.0.1:" in stderr and "resume" not in stderr and "Traceback" not in stderr
    assert caplog.text.count("Wikimedia's User-Agent policy expects") == 1  # no --user_agent: said once


def test_an_outage_after_some_pages_offers_to_resume_and_names_what_was_saved(tmp_path, tokenizer_dir, capsys):
    with MediaWikiServer(cthulhu_wiki()) as server:
        server.fail_after = 3
        code, _, stderr = prepare(capsys, server.url, tmp_path, tokenizer_dir, "--retries", "0",
                                  "--user_agent", "tests (me@example.org)")
    assert code == 1 and "HTTP 503" in stderr and "3 answer(s) fetched in this run are cached" in stderr
    assert "run again to resume" in stderr


def fail_fsync_under(monkeypatch, folder: Path, after: int = 0):
    """os.fsync of files under `folder` fails as on a full disk (ENOSPC) after `after` of them succeeded."""
    real, count = os.fsync, [0]

    def fsync(fd):
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(folder)):
            count[0] += 1
            if count[0] > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell which file is synced")
def test_a_full_disk_is_one_line_naming_the_file_and_the_rerun_resumes(tmp_path, tokenizer_dir, capsys, monkeypatch):
    agent = ("--user_agent", "tests (me@example.org)")
    with MediaWikiServer(cthulhu_wiki()) as server:
        pages = tmp_path / "cache" / "wiki" / site_key(server.url) / "pages"
        fail_fsync_under(monkeypatch, pages, after=2)  # while crawling: the third page
        code, _, stderr = prepare(capsys, server.url, tmp_path, tokenizer_dir, *agent)
        lines = [line for line in stderr.strip().splitlines() if not line.startswith("note: ")]  # no writer: said first
        assert code == 1 and "Traceback" not in stderr and len(lines) == 1
        assert re.search(rf"^error: {re.escape(str(tmp_path / 'cache'))}\S+\.json: No space left on device; ", lines[0])
        assert not list((tmp_path / "cache").rglob("*.tmp")) and not (tmp_path / "out").exists()
        served = list(server.extracts_served)
        monkeypatch.undo()

        fail_fsync_under(monkeypatch, tmp_path / "out")  # while writing the outputs
        code, _, stderr = prepare(capsys, server.url, tmp_path, tokenizer_dir, *agent)
        assert code == 1 and "Traceback" not in stderr
        assert re.search(rf"^error: {re.escape(str(tmp_path / 'out'))}/\S+: No space left on device; ", stderr, re.M)
        monkeypatch.undo()
        assert not [path for path in (tmp_path / "out").iterdir() if path.name.startswith(".")]
        assert prepare(capsys, server.url, tmp_path, tokenizer_dir, *agent)[0] == 0
    resumed = server.extracts_served[len(served):]
    assert len(served) == 3 and len(resumed) == len(set(resumed))
    assert not set(served[:2]) & set(resumed)  # the two pages saved were not fetched again; the one in flight was


def test_a_second_run_on_the_same_cache_is_refused_naming_the_run_that_holds_it(tmp_path, tokenizer_dir, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from cthulhu_sft.files import one_run_at_a_time\n"
         "with one_run_at_a_time(sys.argv[1], '--cache_dir'):\n    print('held', flush=True); time.sleep(60)",
         str(tmp_path / "cache")], stdout=subprocess.PIPE, text=True, cwd=Path(prepare_data.__file__).parent)
    url = closed_port_url()
    try:
        assert holder.stdout.readline() == "held\n"
        in_flight = tmp_path / "cache" / "wiki" / site_key(url) / "pages" / ".page.json.123-abcd.tmp"
        in_flight.parent.mkdir(parents=True)
        in_flight.write_text("{")  # the other run's file being written
        code, _, stderr = prepare(capsys, url, tmp_path, tokenizer_dir)
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and f"{tmp_path / 'cache'} is in use by another run (pid {holder.pid} on " in stderr
    assert "pass another --cache_dir" in stderr and in_flight.exists()
    code, _, stderr = prepare(capsys, url, tmp_path, tokenizer_dir)  # the lock died with its run
    assert code == 1 and "cannot reach" in stderr and not in_flight.exists()


@pytest.mark.parametrize("content", [
    [],
    "page",
    {"title": "ルルイエ", "text": 5},
    {"title": "ルルイエ", "text": "本文", "ns": 0, "revid": 1, "url": None, "fetched": "x", "aliases": "R'lyeh"},
    {"title": "ルルイエ", "text": "本文", "ns": 0, "revid": 1, "url": None, "fetched": "x", "aliases": [5]},
    {"title": None, "missing": True, "text": ""},
    {"redirect": ["ルルイエ"]},
])
def test_a_cached_page_of_the_wrong_shape_is_warned_about_with_its_path_and_fetched_again(server, cache, caplog, content):
    fetch_pages(fast_client(server), cache, ["ルルイエ"])
    path = cache.path("pages", "ルルイエ")
    if isinstance(content, dict):
        content = {"key": "ルルイエ", "version": CACHE_VERSION, **content}
    path.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    pages = fetch_pages(fast_client(server), cache, ["ルルイエ"])
    assert pages["ルルイエ"]["text"].startswith("ルルイエは") and server.extracts_served == ["ルルイエ", "ルルイエ"]
    assert f"ignoring cache file {path}" in caplog.text and "fetching it again" in caplog.text


@pytest.mark.parametrize("members", [None, "none", [None], [{"title": "ルルイエ"}]])
def test_a_cached_listing_of_the_wrong_shape_is_fetched_again_not_taken_for_an_empty_category(server, cache, caplog,
                                                                                             members):
    crawl_category_tree(fast_client(server), cache, ROOT, 0)
    path = cache.path("categories", ROOT)
    listing = json.loads(path.read_text(encoding="utf-8"))
    path.write_text(json.dumps({**listing, "members": members}, ensure_ascii=False), encoding="utf-8")
    articles, _ = crawl_category_tree(fast_client(server), cache, ROOT, 0)
    assert set(articles) == ARTICLES_DEPTH_0 and f"ignoring cache file {path}" in caplog.text


# ---------------------------------------------------------------------------------------------------
# Aliases


def test_pages_carry_their_aliases_from_the_same_requests_as_their_text(server, cache):
    pages = fetch_pages(fast_client(server), cache, ["クトゥルフ", "ルルイエ", "ダゴン (クトゥルフ神話)", "ハスター"])
    assert pages["クトゥルフ"]["aliases"] == ["Cthulhu", "クトゥルー"]  # redirects, en link, the lead's (Cthulhu): once each
    assert pages["ダゴン (クトゥルフ神話)"]["aliases"] == ["ダゴン", "Dagon"]  # without their qualifiers
    assert pages["ルルイエ"]["aliases"] == [] and pages["ハスター"]["aliases"] == []  # a redirect to a section is no name
    assert len(server.requests) == 4  # one per page, as without aliases
    params = server.params_of(0)
    assert params["prop"] == "extracts|info|redirects|langlinks" and params["lllang"] == "en"
    assert params["rdlimit"] == params["lllimit"] == "max" and params["rdshow"] == "!fragment"
    cached = json.loads(cache.path("pages", "クトゥルフ").read_text(encoding="utf-8"))
    assert cached["aliases"] == ["Cthulhu", "クトゥルー"]


def test_redirects_and_langlinks_spread_over_several_answers_are_all_kept(tmp_path):
    wiki = cthulhu_wiki()
    for name in ("クトゥルー", "ク・リトル・リトル", "クートゥリュー", "大いなるクトゥルフ"):
        wiki.add_redirect(f"{name}の別名", "クトゥルフ")
    with MediaWikiServer(wiki, list_items_per_response=1) as server:
        cache = Cache(tmp_path, server.url)
        pages = fetch_pages(fast_client(server), cache, ["ルルイエ", "クトゥルフ"])
    assert any("rdcontinue" in r["params"] for r in server.requests)
    assert pages["クトゥルフ"]["aliases"] == ["Cthulhu", "クトゥルー", "クトゥルーの別名", "ク・リトル・リトルの別名",
                                         "クートゥリューの別名", "大いなるクトゥルフの別名"]
    assert cache.load("pages", "クトゥルフ")["aliases"] == pages["クトゥルフ"]["aliases"]
    assert sorted(server.extracts_served) == ["クトゥルフ", "ルルイエ"]


@pytest.mark.parametrize("title, lead, names", [
    ("クトゥルフ", "クトゥルフ（Cthulhu, クトゥルー）は、架空の神格である。", ["Cthulhu", "クトゥルー"]),
    ("クトゥルフ神話", "クトゥルフ神話（クトゥルフしんわ、英: Cthulhu Mythos）は、", ["クトゥルフしんわ", "Cthulhu Mythos"]),
    ("ハワード・フィリップス・ラヴクラフト", "ハワード・フィリップス・ラヴクラフト（Howard Phillips Lovecraft、1890年8月20日 - "
     "1937年3月15日）は、アメリカの小説家。", ["Howard Phillips Lovecraft"]),
    ("ネクロノミコン", "『ネクロノミコン』(Necronomicon)は、", ["Necronomicon"]),
    ("ルルイエ", "ルルイエ（R'lyeh または R'lyeh（古い綴り））は", ["R'lyeh"]),
    ("ダゴン", "ダゴンは、深きものども（ディープ・ワンズ）に崇拝される存在である。", []),  # not the subject's parenthesis
    ("ハスター", "ハスター（1930年代に、ダーレスが体系化した神話の中で風の精とされる存在）は", []),
    ("ヨグ＝ソトース", "ヨグ＝ソトースは、時間と空間に関わる神格である（門にして鍵）。", []),
    ("アザトース", "アザトース\n\n== 概要 ==\nアザトース（Azathoth）は", []),  # only the lead
])
def test_names_are_taken_from_the_leads_first_parenthesis_after_the_subject_only(title, lead, names):
    assert page_aliases(title, [], [], lead) == names


# ---------------------------------------------------------------------------------------------------
# Size limits


def test_a_5_mb_extract_is_cut_at_a_paragraph_below_the_documented_limit_and_counted(tmp_path):
    wiki = cthulhu_wiki()
    paragraph = "巨大な一覧の段落である。" * 50 + "\n\n"
    wiki.add_page("巨大な一覧", extract=paragraph * (5_000_000 // len(paragraph.encode())))
    with MediaWikiServer(wiki) as server:
        cache = Cache(tmp_path, server.url)
        page = fetch_pages(fast_client(server), cache, ["巨大な一覧"])["巨大な一覧"]
        assert len(page["text"]) <= MAX_PAGE_CHARS and page["text"].endswith("。")
        assert page["cut_chars"] == len(wiki.pages["巨大な一覧"].extract) - len(page["text"])
        assert page["cut_limit"] == MAX_PAGE_CHARS and cache.load("pages", "巨大な一覧") == page
        again = fetch_pages(fast_client(server), cache, ["巨大な一覧"], max_chars=10_000)["巨大な一覧"]
    assert len(again["text"]) <= 10_000 and len(server.requests) == 2  # another limit: fetched and cut again


def test_prepare_data_reports_pages_cut_at_max_page_chars(tmp_path, tokenizer_dir, capsys):
    wiki = cthulhu_wiki()
    lead = "長い項目は、とても長い記事である。\n\n" + "続きの段落である。" * 60  # 559 characters, then a paragraph
    wiki.add_page("長い項目", extract=lead + "\n\n" + "末尾。" * 2000, categories=["Category:クトゥルフ神話"])
    with MediaWikiServer(wiki) as server:
        code, stdout, stderr = prepare(capsys, server.url, tmp_path, tokenizer_dir, "--depth", "0",
                                       "--max_page_chars", "1000", "--user_agent", "tests (me@example.org)")
    assert code == 0, stderr
    assert "pages cut at --max_page_chars 1000: 1 page(s), 6002 characters left out" in stdout
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert "1 (6002 characters left out)" in card


def test_without_network_an_uncached_hub_tokenizer_is_said_at_once(tmp_path):
    hub = closed_port_url().removesuffix("/w/api.php")
    env = {**os.environ, "HF_ENDPOINT": hub, "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "prepare_data.py", "--api_url", closed_port_url(), "--tokenizer",
                             "someone/some-model", "--out_dir", str(tmp_path / "out"), "--cache_dir",
                             str(tmp_path / "cache")], cwd=Path(prepare_data.__file__).parent, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and time.monotonic() - started < 15
    assert f"cannot reach the Hub ({hub}) for someone/some-model's tokenizer.model" in result.stderr
    assert "Retrying" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("body, problem", [
    ({"query": []}, "'query' is list"),
    ({"continue": "x", "query": {}}, "'continue' is str"),
    ({"query": {"pages": {"1": {"title": "ルルイエ"}}}}, "query.pages is dict"),
    ({"query": {"pages": [5]}}, "query.pages: an item is not an object"),
    ({"query": {"pages": [{"pageid": 1}]}}, "query.pages: 'title' is missing"),
    ({"query": {"pages": [{"title": "ルルイエ", "extract": 5}]}}, "query.pages: 'extract' is int in ルルイエ"),
    ({"query": {"pages": [{"title": "ルルイエ", "redirects": {"title": "x"}}]}}, "query.pages: 'redirects' of ルルイエ is not a list"),
    ({"query": {"redirects": [{"from": "a"}]}}, "query.redirects: 'to' is missing"),
    ({"query": {"categorymembers": [{"title": "x", "ns": "0"}]}}, "query.categorymembers: 'ns' is str"),
])
def test_an_answer_of_an_unexpected_shape_is_an_error_that_says_what(tmp_path, body, problem):
    payload = json.dumps(body).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args):
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Handler) as httpd:
        threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
        url = f"http://127.0.0.1:{httpd.server_address[1]}/w/api.php"
        with pytest.raises(WikiError, match=re.escape(f"an answer of an unexpected shape ({problem}")):
            fetch_pages(WikiClient(url, interval=0), Cache(tmp_path, url), ["ルルイエ"])
        with pytest.raises(WikiError, match="unexpected shape|is empty"):
            crawl_category_tree(WikiClient(url, interval=0), Cache(tmp_path / "2", url), ROOT, 0)
        httpd.shutdown()


def test_outside_the_main_thread_a_trickling_body_is_cut_off_at_the_timeout_too(tmp_path):
    """No SIGALRM there: the body's reads keep the deadline themselves."""
    errors = []

    def crawl():
        try:
            fetch_pages(fast_client(server, timeout=1), Cache(tmp_path, server.url), ["ルルイエ"])
        except WikiError as error:
            errors.append(error)

    with MediaWikiServer(cthulhu_wiki()) as server:
        server.trickle_delay = 0.3
        server.faults.append("trickle")
        started = time.monotonic()
        worker = threading.Thread(target=crawl)
        worker.start()
        worker.join(timeout=10)
    assert time.monotonic() - started < 2 and "no complete answer within --timeout 1 s" in str(errors[0])


def test_a_hub_tokenizer_in_the_hubs_cache_loads_without_network(tmp_path, tokenizer_dir, monkeypatch):
    from huggingface_hub import constants

    repo = tmp_path / "hub" / "models--someone--cached-model"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "tokenizer.model").write_bytes((tokenizer_dir / "tokenizer.model").read_bytes())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", closed_port_url().removesuffix("/w/api.php"))
    fmt = prepare_data.load_tokenizer("someone/cached-model")
    assert fmt.encode_text("クトゥルフ") == prepare_data.load_tokenizer(str(tokenizer_dir)).encode_text("クトゥルフ")


def test_a_real_write_failure_through_the_cli_is_one_line_naming_the_file(tmp_path, tokenizer_dir):
    """RLIMIT_FSIZE makes the system refuse any write past 3000 bytes (EFBIG), as a full disk refuses (ENOSPC)."""
    import resource

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # an error from write(), not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000))

    with MediaWikiServer(cthulhu_wiki()) as server:
        result = subprocess.run([sys.executable, "prepare_data.py", "--api_url", server.url, "--depth", "0",
                                 "--tokenizer", str(tokenizer_dir), "--max_tokens", "256", "--request_interval", "0",
                                 "--out_dir", str(tmp_path / "out"), "--cache_dir", str(tmp_path / "cache")],
                                cwd=Path(prepare_data.__file__).parent, capture_output=True, text=True, timeout=120,
                                preexec_fn=small_files)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert re.fullmatch(rf"error: {re.escape(str(tmp_path))}/\S+: File too large; fix that and run again .*", line)
    assert not list(tmp_path.rglob("*.tmp"))


def test_sigterm_before_anything_was_cached_offers_no_resume(tmp_path, tokenizer_dir, capsys):
    with MediaWikiServer(cthulhu_wiki(), retry_after="5") as server:
        server.faults.append("503html")
        server.faults.append("maxlag503")  # the client waits 5 s, as asked, before anything is cached
        timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
        timer.start()
        code, _, stderr = prepare(capsys, server.url, tmp_path, tokenizer_dir, "--retries", "3")
        timer.join()
    assert code == 130 and "interrupted before anything was cached" in stderr and "resume" not in stderr
