"""prepare_data.py through the real CLI against a real MediaWiki 1.39 (Debian's package, TextExtracts, ja).

The stand-in (mediawiki_server.py) answers as MediaWiki documents it; this checks the crawler against the
software itself: stock Japanese namespace names (`カテゴリ:`), a category cycle back to the root, a redirect
listed beside its target, TextExtracts' one extract per answer, sections and notes sections, each page's
aliases (redirects, English interlanguage link, the lead's parentheses) in the same answers, and the cache.
Skipped where php and Debian's mediawiki are not installed (see real_mediawiki.py for the apt line).
"""

import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import PYTHON, run_script
from real_mediawiki import ALIASES, ARTICLES, EMPTY_CATEGORY, ROOT, missing, running_wiki

from cthulhu_sft.wiki import Cache

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=f"no real MediaWiki: {missing()}")]

USER_AGENT = "cthulhu-sft tests (real MediaWiki on 127.0.0.1; cthulhu-sft@users.noreply.github.com)"
EXTRA_TITLES = ["Cthulhu", "ヨグ＝ソトース"]  # a redirect to an article of the category, and a page outside it
CATEGORIES = ["カテゴリ:クトゥルフ神話", "カテゴリ:クトゥルフ神話の神格", "カテゴリ:クトゥルフ神話の作品", "カテゴリ:旧支配者"]


@pytest.fixture(scope="session")
def real_wiki(tmp_path_factory):
    with running_wiki(tmp_path_factory.mktemp("real-mediawiki")) as wiki:
        yield wiki


def prepare(wiki, tmp_path: Path, tokenizer_dir, category: str, *extra: str):
    command = [PYTHON, "prepare_data.py", "--api_url", wiki.api_url, "--category", category, "--depth", "2",
               "--tokenizer", str(tokenizer_dir), "--max_tokens", "256", "--out_dir", str(tmp_path / "out"),
               "--cache_dir", str(tmp_path / "cache"), "--user_agent", USER_AGENT, "--request_interval", "0", *extra]
    return run_script(command, timeout=300)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def printed_requests(stdout: str) -> int:
    """The request count prepare_data.py prints at the end: 'requests: N (R retries, ...)'."""
    return int(re.search(r"^requests: (\d+) \(0 retries", stdout, re.M).group(1))


def asked(requests: list[str]) -> list[dict[str, str]]:
    return [{key: values[0] for key, values in parse_qs(urlsplit(request).query).items()} for request in requests]


@pytest.mark.parametrize("root", [ROOT, f"カテゴリ:{ROOT}", f"Category:{ROOT}"])
def test_a_real_wiki_is_crawled_once_per_article_and_a_rerun_asks_nothing(real_wiki, tmp_path, tokenizer_dir, root):
    before = len(real_wiki.requests())
    result = prepare(real_wiki, tmp_path, tokenizer_dir, root, "--titles", *EXTRA_TITLES)
    assert result.returncode == 0, result.stderr
    requests = asked(real_wiki.requests()[before:])
    assert printed_requests(result.stdout) == len(requests)  # what it counts is what the server saw

    # Each category listed once, the root included, though the subcategory 神格 lists it again.
    listings = [request["cmtitle"] for request in requests if request.get("list") == "categorymembers"]
    assert listings[0] == (root if ":" in root else f"Category:{root}")  # asked as written (the server normalises)
    assert sorted(listings[1:]) == sorted(CATEGORIES[1:])  # subcategories by the server's titles
    # Each article's text asked for once: TextExtracts sends one extract per answer.
    extracts = [request for request in requests if request.get("prop") == "extracts|info|redirects|langlinks"]
    articles = ARTICLES | {"ヨグ＝ソトース"}
    assert len(extracts) == len(articles) and len(requests) == len(listings) + len(extracts)

    out = tmp_path / "out"
    sources = read_jsonl(out / "source_texts.jsonl")
    assert sorted(source["title"] for source in sources) == sorted(articles)  # each once, by the server's title
    rows = [row for split in ("train", "eval", "eval_known") if (out / f"{split}.jsonl").exists()
            for row in read_jsonl(out / f"{split}.jsonl")]
    assert {row["title"] for row in rows} == articles  # no redirect, template or category as an article
    assert all(row["source"].startswith(f"http://127.0.0.1:{real_wiki.port}/index.php/") and row["revid"] for row in rows)

    # Sections: the lead, 概要, a nested heading; notes sections (脚注 and its subsections, 参考文献, 外部リンク) dropped.
    cthulhu = [row for row in rows if row["title"] == "クトゥルフ"]
    assert {row["section"] for row in cthulhu} == {"", "概要", "登場作品のうち小説"}
    [cthulhu_text] = [source["text"] for source in sources if source["title"] == "クトゥルフ"]
    assert "架空の注釈の本文。" in cthulhu_text and "架空の参考文献" in cthulhu_text  # the server sent them
    assert not any(re.search(r"架空の(出典|注釈|参考文献|公式サイト)|\[1\]", row["response"]) for row in rows)
    # A reading in parentheses stays inside its sentence.
    assert any("旧支配者（きゅうしはいしゃ）の一柱に数えられる。" in row["response"] for row in cthulhu)
    assert any(row["response"].startswith("巨大な体と蛸（たこ）に似た頭部") for row in cthulhu)

    # Each page's other names came with its text: redirects (not one to a section), English link, lead's parentheses.
    cache = Cache(tmp_path / "cache" / "wiki", real_wiki.api_url)
    assert {title: cache.load("pages", title)["aliases"] for title in ALIASES} == ALIASES

    first = {path.name: path.read_bytes() for path in out.iterdir()}
    asked_so_far = len(real_wiki.requests())
    again = prepare(real_wiki, tmp_path, tokenizer_dir, root, "--titles", *EXTRA_TITLES)
    assert again.returncode == 0, again.stderr
    assert len(real_wiki.requests()) == asked_so_far and printed_requests(again.stdout) == 0
    assert {path.name: path.read_bytes() for path in out.iterdir()} == first


@pytest.mark.parametrize("category", [EMPTY_CATEGORY, "存在しない分類"])
def test_an_empty_or_absent_category_is_a_clear_error(real_wiki, tmp_path, tokenizer_dir, category):
    result = prepare(real_wiki, tmp_path, tokenizer_dir, category)
    assert result.returncode == 2  # bad input, not a crash nor a retry
    assert f"the listing of カテゴリ:{category} is empty" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
