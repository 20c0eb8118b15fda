"""A stand-in for the MediaWiki Action API (1.39, formatversion=2) on 127.0.0.1, a real http.server in a thread.

It answers what cthulhu_sft/wiki.py asks, the way MediaWiki documents it and does it:
  * titles as MediaWiki normalises them ('_' is ' ', a capital first letter, namespace names in any case
    and language): a wiki built with `namespaces=STOCK_JAPANESE` (Debian's package with a Japanese
    content language) calls `Category:X` `カテゴリ:X`, and says so in `normalized`;
  * list=categorymembers with cmtitle/cmtype/cmnamespace/cmlimit and `cmcontinue`, a few members per
    answer (`empty_first_page`: an answer with no members but a `continue`, as miser mode may send);
    `titles` asked alongside are answered in the first answer only (continuations of a list leave the
    page set out: `continue` "-||");
  * prop=extracts (TextExtracts: one whole-page extract per answer and `excontinue`, explaintext,
    exsectionformat=wiki; `extracts=False`: a wiki without it, which warns "Unrecognized value"),
    prop=info (lastrevid, fullurl), prop=redirects (rdnamespace, rdshow, rdlimit, `rdcontinue`) and
    prop=langlinks (lllang, lllimit, `llcontinue`), at most `list_items_per_response` items each per answer,
    with redirects=1, normalized titles, missing and invalid titles, and the `continue` string that marks
    finished modules;
  * faults, one per request from `faults` in order: "maxlag" (200 + error + Retry-After), "maxlag503",
    "429", "503html", "html200", "drop" (connection closed without an answer), "truncate" (half a body),
    "trickle" (the answer a byte every `trickle_delay` seconds), "trickle_all" (its status line and headers
    too); `retry_after` is the Retry-After that
    "maxlag", "maxlag503" and "429" send;
    `fail_after`: every request after that many answers gets a 503 HTML page (an outage);
    `endless_continuation`: every answer asks to continue with a new token and brings nothing.
Every request is recorded in `requests` (params, headers, time) so tests can count and inspect them.
"""

import gzip
import json
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

HTML_ERROR = (
    "<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>Wikimedia Error</title></head>"
    "<body><h1>Error</h1><p>Our servers are currently under maintenance or experiencing a technical issue.</p>"
    "</body></html>"
)
# Namespace names: the canonical (English) ones, which ja.wikipedia also shows, and MediaWiki's stock
# Japanese ones (languages/messages/MessagesJa.php). Every wiki understands both, in any letter case.
CANONICAL = {6: "File", 10: "Template", 14: "Category"}
STOCK_JAPANESE = {6: "ファイル", 10: "テンプレート", 14: "カテゴリ"}
NAMESPACE_NUMBERS = {name.casefold(): ns for names in (CANONICAL, STOCK_JAPANESE) for ns, name in names.items()}


@dataclass
class Page:
    title: str
    pageid: int
    revid: int
    ns: int = 0
    extract: str = ""  # TextExtracts' plain text with "== heading ==" lines
    redirect: str | None = None
    fragment: str = ""  # a redirect to a section: "Target#fragment"
    langlinks: dict = field(default_factory=dict)  # interlanguage links: {"en": "Cthulhu"}


@dataclass
class Wiki:
    pages: dict = field(default_factory=dict)
    categories: dict = field(default_factory=dict)  # category title -> [member titles]
    namespaces: dict = field(default_factory=lambda: dict(CANONICAL))  # the names this wiki shows
    _next_id: int = 100

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def split(self, title: str) -> tuple[int, str]:
        """(namespace, title as MediaWiki normalises it): '_' is ' ', spaces collapse, a capital first letter."""
        title = " ".join(title.replace("_", " ").split())
        prefix, colon, rest = title.partition(":")
        ns = NAMESPACE_NUMBERS.get(prefix.strip().casefold()) if colon else None
        if ns is None:
            return 0, title[:1].upper() + title[1:]
        rest = rest.strip()
        return ns, f"{self.namespaces[ns]}:{rest[:1].upper()}{rest[1:]}"

    def normalize(self, title: str) -> str:
        return self.split(title)[1]

    def add_page(self, title, extract="", categories=()):
        ns, title = self.split(title)
        self.pages[title] = Page(title, self._new_id(), self._new_id() * 10, ns, extract)
        for category in categories:
            self.categories.setdefault(self.normalize(category), []).append(title)
        return self.pages[title]

    def add_redirect(self, title, target, categories=()):
        page = self.add_page(title, categories=categories)
        target, _, page.fragment = target.partition("#")
        page.redirect = self.normalize(target)
        return page

    def redirects_to(self, title: str, namespaces=None, fragments=None) -> list[dict]:
        """prop=redirects' items for `title` (rdprop=title): the redirects that lead to it."""
        return [{"ns": page.ns, "title": page.title} for page in self.pages.values()
                if page.redirect == title and (namespaces is None or page.ns in namespaces)
                and (fragments is None or bool(page.fragment) == fragments)]

    def add_category(self, title, parents=()):
        title = self.normalize(title)
        if title not in self.pages:
            self.add_page(title)
        self.categories.setdefault(title, [])
        for parent in parents:
            self.categories.setdefault(self.normalize(parent), []).append(title)


class MediaWikiServer:
    def __init__(self, wiki: Wiki, members_per_response=2, extracts=True, retry_after="0", empty_first_page=False,
                 endless_continuation=False, list_items_per_response=500):
        self.wiki = wiki
        self.list_items_per_response = list_items_per_response  # redirects and langlinks: at most rd/lllimit
        self.members_per_response = members_per_response
        self.extracts = extracts
        self.retry_after = retry_after
        self.empty_first_page = empty_first_page
        self.endless_continuation = endless_continuation
        self.trickle_delay = 0.5
        self.faults = deque()
        self.fail_after = None
        self.answered = 0
        self.requests = []
        self.extracts_served = []  # titles, one per extract sent
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/w/api.php"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    def params_of(self, index: int) -> dict:
        return self.requests[index]["params"]

    # -----------------------------------------------------------------------------------------------

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls

            def log_message(self, *args):
                pass

            def do_GET(self):
                parts = urlsplit(self.path)
                params = {key: values[-1] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
                with server._lock:
                    server.requests.append({"params": params, "headers": dict(self.headers), "time": time.monotonic()})
                    fault = server.faults.popleft() if server.faults else None
                    outage = server.fail_after is not None and server.answered >= server.fail_after
                if outage:
                    fault = "503html"
                if fault == "drop":
                    self.close_connection = True
                    return
                if fault == "maxlag" or fault == "maxlag503":
                    body = {"error": {"code": "maxlag", "info": "Waiting for 10.64.0.1: 7 seconds lagged",
                                      "host": "10.64.0.1", "lag": 7, "type": "db"}}
                    headers = {"Retry-After": server.retry_after, "X-Database-Lag": "7", "MediaWiki-API-Error": "maxlag"}
                    return self._send(200 if fault == "maxlag" else 503, json.dumps(body), "application/json", headers)
                if fault == "429":
                    return self._send(429, "Too many requests", "text/plain", {"Retry-After": server.retry_after})
                if fault == "503html":
                    return self._send(503, HTML_ERROR, "text/html; charset=utf-8")
                if fault == "html200":
                    return self._send(200, HTML_ERROR, "text/html; charset=utf-8")
                if parts.path != "/w/api.php":
                    return self._send(404, "not found", "text/plain")
                body = server.answer(params)
                with server._lock:
                    server.answered += 1
                text = json.dumps(body, ensure_ascii=False)
                if fault == "truncate":
                    return self._send(200, text, "application/json", truncate=True)
                if fault == "trickle":
                    return self._send(200, text, "application/json", trickle=True)
                if fault == "trickle_all":  # the status line and headers too
                    return self._trickle(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                         + f"Content-Length: {len(text.encode())}\r\n\r\n".encode() + text.encode())
                self._send(200, text, "application/json; charset=utf-8")

            def _send(self, status, text, content_type, headers=None, truncate=False, trickle=False):
                data = text.encode("utf-8")
                gzipped = "gzip" in self.headers.get("Accept-Encoding", "") and not truncate and not trickle
                if gzipped:
                    data = gzip.compress(data)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                if gzipped:
                    self.send_header("Content-Encoding", "gzip")
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if truncate:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                if trickle:
                    return self._trickle(data)
                self.wfile.write(data[: len(data) // 2] if truncate else data)

            def _trickle(self, data: bytes):
                self.close_connection = True
                try:
                    for byte in data:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(server.trickle_delay)
                except OSError:  # the client gave up
                    pass

        return Handler

    # -----------------------------------------------------------------------------------------------

    def answer(self, params: dict) -> dict:
        if params.get("action") != "query":
            return {"error": {"code": "badvalue", "info": f"Unrecognized value for parameter \"action\": {params.get('action')}."}}
        body = {}
        if "titles" in params and not params.get("continue", "").startswith("-"):  # "-": the page set is done
            body = self._pages(params)
        if params.get("list") == "categorymembers":
            listing = self._categorymembers(params)
            if "error" in listing:
                return listing
            body.setdefault("query", {}).update(listing["query"])
            body.pop("batchcomplete", None)
            body.update({key: value for key, value in listing.items() if key != "query"})
        return body or {"batchcomplete": True}

    def _fresh_token(self) -> int:
        return len(self.requests)

    def _categorymembers(self, params: dict) -> dict:
        ns, category = self.wiki.split(params["cmtitle"])
        if ns != 14:
            return {"error": {"code": "invalidcategory", "info": "The category name you entered is not valid."}}
        if self.endless_continuation:
            return {"query": {"categorymembers": []},
                    "continue": {"cmcontinue": f"page|{self._fresh_token()}", "continue": "-||"}}
        members = []
        types = set(params.get("cmtype", "page|subcat|file").split("|"))
        namespaces = {int(ns) for ns in params["cmnamespace"].split("|")} if params.get("cmnamespace") else None
        for title in sorted(self.wiki.categories.get(category, [])):
            page = self.wiki.pages[title]
            kind = "subcat" if page.ns == 14 else "file" if page.ns == 6 else "page"
            if kind in types and (namespaces is None or page.ns in namespaces):
                members.append({"pageid": page.pageid, "ns": page.ns, "title": page.title, "type": kind})
        offset = int(params["cmcontinue"].split("|")[-1]) if "cmcontinue" in params else 0
        if self.empty_first_page and "cmcontinue" not in params:
            count = 0  # miser mode: zero members, but a continuation
        else:
            limit = len(members) if params.get("cmlimit") == "max" else int(params.get("cmlimit", "10"))
            count = min(limit, self.members_per_response)
        body = {"query": {"categorymembers": members[offset: offset + count]}, "batchcomplete": True}
        if offset + count < len(members) or (count == 0 and members):
            body["continue"] = {"cmcontinue": f"page|{offset + count}", "continue": "-||"}
        return body

    def _list_items(self, prop: str, title: str, params: dict) -> list[dict]:
        if prop == "langlinks":
            links = self.wiki.pages[title].langlinks
            return [{"lang": lang, "title": name} for lang, name in sorted(links.items())
                    if params.get("lllang") in (None, lang)]
        namespaces = {int(ns) for ns in params["rdnamespace"].split("|")} if params.get("rdnamespace") else None
        show = params.get("rdshow")
        return self.wiki.redirects_to(title, namespaces, None if not show else show == "fragment")

    def _pages(self, params: dict) -> dict:
        query, warnings = {}, {}
        props = set(params.get("prop", "").split("|")) - {""}
        done = set(params.get("continue", "").split("||")[-1].split("|")) - {"", "-"}
        if "extracts" in props and not self.extracts:
            warnings["query"] = {"warnings": 'Unrecognized value for parameter "prop": extracts.'}
            props.discard("extracts")
        titles, normalized, redirects = [], [], []
        for requested in params["titles"].split("|"):
            title = self.wiki.normalize(requested)
            if title != requested:
                normalized.append({"from": requested, "to": title})
            seen = set()
            while params.get("redirects") and title in self.wiki.pages and self.wiki.pages[title].redirect and title not in seen:
                seen.add(title)
                redirects.append({"from": title, "to": self.wiki.pages[title].redirect})
                title = self.wiki.pages[title].redirect
            if title not in titles:
                titles.append(title)
        if normalized:
            query["normalized"] = normalized
        if redirects:
            query["redirects"] = redirects
        pages, good = [], []
        for title in titles:
            if any(char in title for char in "[]{}<>#") or title.endswith(":"):
                pages.append({"title": title, "invalidreason": "The requested page title contains invalid characters.",
                              "invalid": True})
            elif title not in self.wiki.pages:
                pages.append({"ns": self.wiki.split(title)[0], "title": title, "missing": True})
            else:
                page = self.wiki.pages[title]
                entry = {"pageid": page.pageid, "ns": page.ns, "title": page.title}
                if "info" in props and "info" not in done:
                    entry.update({"contentmodel": "wikitext", "pagelanguage": "ja", "lastrevid": page.revid,
                                  "length": len(page.extract.encode())})
                    if "url" in params.get("inprop", ""):
                        url = f"https://ja.wikipedia.org/wiki/{quote(page.title.replace(' ', '_'))}"
                        entry.update({"fullurl": url, "canonicalurl": url})
                pages.append(entry)
                good.append(entry)
        continuation, finished = {}, set()
        for prop, prefix in (("redirects", "rd"), ("langlinks", "ll")):
            if prop not in props or prop in done:
                continue
            items = [(entry, item) for entry in good for item in self._list_items(prop, entry["title"], params)]
            start = int(params.get(f"{prefix}continue", "0"))
            limit = params.get(f"{prefix}limit", "10")
            limit = min(len(items) if limit == "max" else int(limit), self.list_items_per_response)
            for entry, item in items[start: start + limit]:
                entry.setdefault(prop, []).append(item)
            if start + limit < len(items):
                continuation[f"{prefix}continue"] = start + limit
            else:
                finished.add(prop)
        if "extracts" in props and "extracts" not in done:
            start = int(params.get("excontinue", "0"))
            limit = 1 if not params.get("exintro") else 20
            if int(params.get("exlimit", "20")) > 1 and not params.get("exintro") and len(good) > 1:
                warnings["extracts"] = {"warnings": '"exlimit" was too large for a whole article extracts request, lowered to 1.'}
            served = [] if self.endless_continuation else good[start: start + limit]
            for entry in served:
                entry["extract"] = self.wiki.pages[entry["title"]].extract
                self.extracts_served.append(entry["title"])
            if self.endless_continuation:
                continuation["excontinue"] = self._fresh_token()
            elif start + limit < len(good):
                continuation["excontinue"] = start + limit
            else:
                finished.add("extracts")
        query["pages"] = pages
        body = {"query": query}
        if warnings:
            body["warnings"] = warnings
        if continuation:
            finished = sorted((props & {"info"}) | finished | done)
            body["continue"] = {**continuation, "continue": "||" + "|".join(finished)}
        else:
            body["batchcomplete"] = True
        return body


# ---------------------------------------------------------------------------------------------------
# A small Cthulhu wiki for the tests (text written for the tests, not copied from Wikipedia)

LONG_TITLE = "クトゥルフ神話TRPG: 第7版/" + "ルールブックに登場する架空の書物と神格の一覧" * 4


def cthulhu_wiki(namespaces=None) -> Wiki:
    wiki = Wiki(namespaces=dict(namespaces or CANONICAL))
    root, gods, works, old_ones = ("Category:クトゥルフ神話", "Category:クトゥルフ神話の神格",
                                   "Category:クトゥルフ神話の作品", "Category:旧支配者")
    wiki.add_category(root)
    wiki.add_category(gods, parents=[root])
    wiki.add_category(works, parents=[root])
    wiki.add_category(old_ones, parents=[gods])
    wiki.add_category(root, parents=[gods])  # a cycle: the root inside its own subcategory
    wiki.add_page(
        "クトゥルフ",
        extract=(
            "クトゥルフ（Cthulhu）は、怪奇作家が創作した架空の神格である[1]。海底都市ルルイエで眠り続けているとされる。\n\n\n"
            "== 概要 ==\n"
            "巨大な体と蛸に似た頭部を持つ存在として描かれる。夢を通じて人間の心に働きかけるという[要出典]。\n\n\n"
            "== 登場作品 ==\n\n\n"
            "=== 小説 ===\n"
            "最初に登場したのは1928年に発表された短編である。その後、多くの作家が作品に取り入れた。\n\n\n"
            "== 脚注 ==\n\n\n"
            "=== 注釈 ===\n"
            "^ 出典の説明文。ここは学習に使わない。\n\n\n"
            "== 関連項目 ==\n"
            "ルルイエ\nダゴン (クトゥルフ神話)\n\n\n"
            "== 外部リンク ==\n"
            "公式サイト"
        ),
        categories=[root, gods],
    )
    wiki.add_page(
        "ルルイエ",
        extract="ルルイエは、太平洋の底に沈んだとされる架空の都市である。非ユークリッド的な幾何学で造られているという。\n\n\n"
                "== 特徴 ==\n都市は緑色の石で築かれている。星辰が正しい位置に来ると浮上するとされる。",
        categories=[root],
    )
    wiki.add_page(
        "ネクロノミコン",
        extract="ネクロノミコンは、作中に登場する架空の魔道書である。狂える詩人が著したと設定されている。\n\n\n"
                "== 来歴 ==\n原題はアラビア語で書かれたとされる。後に複数の言語へ翻訳されたという設定がある。\n\n\n"
                "== 参考文献 ==\n架空の書誌情報。",
        categories=[root],
    )
    wiki.add_page(
        "ニャルラトホテプ",
        extract="ニャルラトホテプは、千の姿を持つとされる神格である。人間の姿で現れることもある。\n\n\n"
                "== 化身 ==\n黒い男の姿や、顔のない怪物の姿で描かれる。",
        categories=[gods],
    )
    wiki.add_page(
        "ダゴン (クトゥルフ神話)",
        extract="ダゴンは、深きものどもに崇拝される存在である。海に住む巨大な生き物として描かれる。",
        categories=[gods],
    )
    wiki.add_page("ハスター", extract="ハスターは、名状しがたいものとも呼ばれる神格である。風に関係づけられることが多い。",
                  categories=[old_ones])
    wiki.add_page("インスマスを覆う影", extract="インスマスを覆う影は、寂れた港町を舞台にした中編小説である。語り手は町の秘密を知ることになる。",
                  categories=[works])
    wiki.add_redirect("インスマウスの影", "インスマスを覆う影", categories=[works])
    wiki.add_page("狂気の山脈にて", extract="狂気の山脈にては、南極探検を描いた長編小説である。探検隊は古代の都市を発見する。",
                  categories=[works])
    wiki.add_page(LONG_TITLE, extract="この一覧は、ゲームの資料に登場する書物と神格をまとめたものである。項目は五十音順に並ぶ。",
                  categories=[works])
    wiki.add_page("Template:クトゥルフ神話", extract="ナビゲーション", categories=[root])
    wiki.add_page("ヨグ＝ソトース", extract="ヨグ＝ソトースは、時間と空間に関わる神格である。門にして鍵とも呼ばれる。")
    wiki.add_redirect("Cthulhu", "クトゥルフ")
    wiki.add_redirect("クトゥルー", "クトゥルフ")
    wiki.add_redirect("ルルイエの館", "ルルイエ#特徴")  # to a section: not another name of the page
    wiki.pages["クトゥルフ"].langlinks.update(en="Cthulhu", fr="Cthulhu (mythe)")
    wiki.pages["ダゴン (クトゥルフ神話)"].langlinks["en"] = "Dagon (Cthulhu Mythos)"
    wiki.pages["ネクロノミコン"].langlinks["en"] = "Necronomicon"
    return wiki


# Articles of cthulhu_wiki() under the root category, by depth.
ARTICLES_DEPTH_0 = {"クトゥルフ", "ルルイエ", "ネクロノミコン"}
ARTICLES_DEPTH_1 = ARTICLES_DEPTH_0 | {"ニャルラトホテプ", "ダゴン (クトゥルフ神話)", "インスマスを覆う影",
                                      "インスマウスの影", "狂気の山脈にて", LONG_TITLE}
ARTICLES_DEPTH_2 = ARTICLES_DEPTH_1 | {"ハスター"}
