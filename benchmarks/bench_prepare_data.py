"""Crawl cost against the loopback MediaWiki stand-in: requests per article and pages per second, cold and cached.

    python benchmarks/bench_prepare_data.py                 # 200 synthetic articles in 5 categories
    python benchmarks/bench_prepare_data.py --articles 1000 --members_per_response 500 --interval 0.5

It starts tests/mediawiki_server.py on 127.0.0.1 with N articles (each ~1,500 characters in 4 sections,
some listed in two categories, some redirects), then runs the real crawl (cthulhu_sft.wiki: category
listing with `continue`, batched prop=extracts|info with `excontinue`) twice on one cache folder:
cold (empty cache) and cached (a rerun). `--interval` is the polite delay between requests
(prepare_data.py's --request_interval, 0.5 s by default there; 0 here to measure the client itself).
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from mediawiki_server import MediaWikiServer, Wiki  # noqa: E402

from cthulhu_sft.examples import build_passages  # noqa: E402
from cthulhu_sft.wiki import Cache, WikiClient, crawl_category_tree, fetch_pages  # noqa: E402

ROOT = "Category:クトゥルフ神話"


def synthetic_wiki(articles: int, categories: int) -> Wiki:
    wiki = Wiki()
    wiki.add_category(ROOT)
    subcategories = [f"Category:架空の分類{i}" for i in range(categories)]
    for category in subcategories:
        wiki.add_category(category, parents=[ROOT])
    for i in range(articles):
        sections = "".join(
            f"\n\n\n== 節{s} ==\n" + "".join(f"第{i}項の節{s}について、{n}番目の説明がここに書かれている。" for n in range(8))
            for s in range(3)
        )
        lists = [subcategories[i % categories]] + ([ROOT] if i % 7 == 0 else [])  # some in two categories
        wiki.add_page(f"架空の項目{i}", extract=f"架空の項目{i}は、ベンチマークのための記事である。" * 6 + sections, categories=lists)
        if i % 10 == 0:
            wiki.add_redirect(f"別名{i}", f"架空の項目{i}", categories=[subcategories[(i + 1) % categories]])
    return wiki


def crawl(server, cache_dir, interval) -> tuple[int, int, float]:
    client = WikiClient(server.url, interval=interval, backoff_factor=0)
    cache = Cache(cache_dir, server.url)
    started = time.perf_counter()
    titles, _ = crawl_category_tree(client, cache, ROOT, 1)
    pages = fetch_pages(client, cache, titles)
    seconds = time.perf_counter() - started
    articles = {page["title"] for page in pages.values() if not page.get("missing")}
    return len(articles), client.requests, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=200)
    parser.add_argument("--categories", type=int, default=5)
    parser.add_argument("--members_per_response", type=int, default=500, help="what the server returns per listing")
    parser.add_argument("--interval", type=float, default=0.0, help="polite delay between requests (s)")
    parser.add_argument("--tokenizer", default=None, help="also time passage building with this tokenizer folder")
    args = parser.parse_args()

    wiki = synthetic_wiki(args.articles, args.categories)
    with MediaWikiServer(wiki, members_per_response=args.members_per_response) as server, \
            tempfile.TemporaryDirectory() as cache_dir:
        for label in ("cold", "cached"):
            before = len(server.requests)
            articles, requests, seconds = crawl(server, cache_dir, args.interval)
            served = len(server.requests) - before
            print(f"{label:6s}: {articles} articles, {requests} requests (server saw {served}), "
                  f"{requests / articles:.3f} requests/article, {articles / seconds:.1f} pages/s, {seconds:.2f} s")
    if args.tokenizer:
        from cthulhu_sft.format import MistralFormat

        fmt = MistralFormat.from_pretrained(args.tokenizer)
        started = time.perf_counter()
        passages = sum(len(build_passages(p.title, p.extract, fmt, 256)[0]) for p in wiki.pages.values() if p.extract)
        seconds = time.perf_counter() - started
        print(f"passages: {passages} from {args.articles} articles (max_tokens 256) in {seconds:.2f} s")


if __name__ == "__main__":
    main()
