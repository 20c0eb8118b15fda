"""A polite, resumable MediaWiki Action API client: category crawl and page text, cached page by page.

Everything here follows the API's documented behaviour, not one server's habits:
  * every action=query request follows `continue` until the server stops sending it (the server
    decides how much a response holds: TextExtracts gives one whole-page extract per request);
  * `formatversion=2` is requested, and formatversion 1 answers (pages keyed by id, "" flags, "*")
    are read as well;
  * `maxlag=5`, a descriptive User-Agent, serial requests at a polite interval; transport faults
    (dropped connections, 429, 5xx, honouring Retry-After) are retried by urllib3's `Retry` mounted
    on the requests session, and API-level faults (maxlag, ratelimited, a cut or non-JSON body) by
    the same `Retry` class, with the same budget and the same Retry-After handling.
Each page (and each category listing) is cached as one JSON file as soon as it is complete, so a
second run makes no request and an interrupted crawl resumes where it stopped.
"""

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ProtocolError
from urllib3.util.retry import Retry

from .files import write_text_atomic

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://ja.wikipedia.org/w/api.php"
DEFAULT_USER_AGENT = (
    f"cthulhu-sft/0.1 (https://github.com/cthulhu-sft/cthulhu-sft; cthulhu-sft@users.noreply.github.com) "
    f"python-requests/{requests.__version__}"
)
MAXLAG = 5  # seconds; what Wikimedia recommends for non-interactive clients
TITLES_PER_REQUEST = 50  # the API's limit for `titles` (500 for bots, which we are not)
MAX_TITLES_BYTES = 4000  # keep the URL short enough for proxies, whatever the titles' length
RETRYABLE_API_ERRORS = {"maxlag", "ratelimited", "readonly"}
RETRY_STATUSES = (429, 500, 502, 503, 504)
CACHE_VERSION = 1
NS_MAIN, NS_CATEGORY = 0, 14


class WikiError(RuntimeError):
    """The wiki could not be read (after retries), or answered something this client cannot use."""


# ---------------------------------------------------------------------------------------------------
# Reading both formatversion shapes


def _flag(page: dict, name: str) -> bool:
    """formatversion=2 has `"missing": true`, formatversion=1 has `"missing": ""`."""
    return name in page and page[name] is not False


def _string(value) -> str | None:
    """A string field, also in formatversion 1's {"*": text} shape."""
    if isinstance(value, dict):
        value = value.get("*", value.get("content"))
    return value if isinstance(value, str) else None


def _pages(query: dict) -> list[dict]:
    pages = query.get("pages") or []
    return list(pages.values()) if isinstance(pages, dict) else list(pages)


def _warnings(data: dict) -> list[str]:
    """{"warnings": {module: {"warnings": text}}} (fv2), {module: {"*": text}} (fv1), or a list (errorformat)."""
    warnings = data.get("warnings") or {}
    if isinstance(warnings, list):
        return [f"{item.get('module', '')}: {item.get('text') or item.get('*') or item}" for item in warnings]
    texts = []
    for module, value in warnings.items():
        text = _string(value.get("warnings", value)) if isinstance(value, dict) else _string(value)
        if text:
            texts.append(f"{module}: {text}")
    return texts


def _api_error(data: dict) -> tuple[str, str] | None:
    """(code, info) of an error answer: {"error": {...}} or, with errorformat, {"errors": [...]}."""
    if isinstance(data.get("error"), dict):
        error = data["error"]
        return str(error.get("code", "unknown")), str(error.get("info") or error.get("*") or "")
    if isinstance(data.get("errors"), list) and data["errors"]:
        error = data["errors"][0]
        return str(error.get("code", "unknown")), str(error.get("text") or error.get("*") or error.get("html") or "")
    return None


def _continuation(data: dict) -> dict | None:
    """The parameters of the next request: `continue` (MediaWiki >= 1.26) or the old `query-continue`."""
    if isinstance(data.get("continue"), dict):
        return {key: str(value) for key, value in data["continue"].items()}
    if isinstance(data.get("query-continue"), dict):
        flat = {}
        for values in data["query-continue"].values():
            flat.update({key: str(value) for key, value in values.items()})
        return flat or None
    return None


def _body_snippet(response: requests.Response) -> str:
    text = response.text[:2000]
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.S | re.I)
    if title:
        text = title.group(1)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()[:200]


# ---------------------------------------------------------------------------------------------------
# HTTP


class WikiClient:
    """Serial GET requests to one api.php, with retries, a polite interval and a request count."""

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        user_agent: str | None = None,
        retries: int = 5,
        backoff_factor: float = 1.0,
        interval: float = 0.5,
        timeout: float = 60.0,
    ):
        self.api_url = api_url
        self.interval = interval
        self.timeout = (10.0, timeout)
        self.requests = 0  # HTTP requests sent, retries included
        self.retries = 0
        self._last_request = 0.0
        self._warned = set()
        # One budget for every kind of fault; Retry-After is honoured for 429/503 and for maxlag.
        self.retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            other=retries,
            backoff_factor=backoff_factor,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET"}),
            respect_retry_after_header=True,
            raise_on_status=False,  # the last answer comes back, so its error can be reported
        )
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent or DEFAULT_USER_AGENT
        self.session.headers["Accept-Encoding"] = "gzip"
        adapter = HTTPAdapter(max_retries=self.retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def _wait_turn(self) -> None:
        wait = self._last_request + self.interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_request = time.monotonic()

    def get(self, params: dict) -> dict:
        """One API call: the decoded JSON answer, after retrying transport and API-level faults."""
        params = {"format": "json", "formatversion": "2", "maxlag": str(MAXLAG), **params}
        retry = self.retry.new()  # budget for faults urllib3 cannot see (maxlag, cut or non-JSON body)
        while True:
            self._wait_turn()
            response = None
            try:
                response = self.session.get(self.api_url, params=params, timeout=self.timeout, stream=True)
                history = response.raw.retries.history if getattr(response.raw, "retries", None) else ()
                self.requests += 1 + len(history)
                self.retries += len(history)
                if history:
                    causes = ", ".join(str(item.status or type(item.error).__name__) for item in history)
                    logger.info("retried %d time(s) after %s", len(history), causes)
                retried = len(history)
                body = response.content  # a connection dropped mid-body raises here
            except (requests.exceptions.ChunkedEncodingError, requests.exceptions.ContentDecodingError) as error:
                response.close()
                problem, cause = f"the connection broke while reading the answer ({error})", ProtocolError(str(error))
            except requests.exceptions.RequestException as error:
                # urllib3 already spent the retry budget on it (connection refused, reset, timeouts).
                self.requests += 1 + self.retry.total
                reason = re.sub(r" with url: \S+", "", str(error))  # not the whole query string
                raise WikiError(f"{self.api_url}: no answer after {self.retry.total} retries: {reason}") from None
            else:
                if response.status_code != 200:
                    raise WikiError(
                        f"{self.api_url} answered HTTP {response.status_code} (after {retried} retries): "
                        f"{_body_snippet(response)}"
                        + (" (Wikimedia refuses requests without a descriptive --user_agent)" if response.status_code == 403 else "")
                    )
                try:
                    data = json.loads(body)
                    if not isinstance(data, dict):
                        raise ValueError("not a JSON object")
                except ValueError:
                    kind = response.headers.get("Content-Type", "unknown type")
                    problem = f"the answer is not JSON ({kind}): {_body_snippet(response)!r}; is --api_url the api.php endpoint?"
                    cause = ProtocolError(problem)
                else:
                    error = _api_error(data)
                    if error is None:
                        for warning in _warnings(data):
                            if warning not in self._warned:
                                self._warned.add(warning)
                                logger.warning("API warning: %s", warning)
                        return data
                    code, info = error
                    if code not in RETRYABLE_API_ERRORS and not code.startswith("internal_api_error"):
                        shown = {key: value for key, value in params.items() if key not in ("titles", "format")}
                        raise WikiError(f"{self.api_url}: API error '{code}': {info} (request {shown})")
                    problem, cause = f"API error '{code}': {info}", None
            try:
                raw = response.raw if response is not None and cause is None else None
                retry = retry.increment("GET", self.api_url, response=raw, error=cause)
            except MaxRetryError:
                raise WikiError(f"{self.api_url}: giving up after {self.retry.total} retries: {problem}") from None
            self.retries += 1
            logger.info("retrying (%s)", problem)
            retry.sleep(raw)

    def query(self, params: dict, start: dict | None = None):
        """Yields the answers of an action=query request, following `continue` until the server stops.

        `start` is a `continue` object saved from an earlier answer, to resume from there.
        """
        base = {"action": "query", **params}
        continuation, seen = dict(start or {}), set()
        while True:
            data = self.get({**base, **continuation})
            yield data
            continuation = _continuation(data)
            if not continuation:
                return
            key = json.dumps(continuation, sort_keys=True)
            if key in seen:
                raise WikiError(f"{self.api_url}: the server repeated the continuation {continuation}; stopping")
            seen.add(key)


# ---------------------------------------------------------------------------------------------------
# Cache


def safe_filename(title: str, max_prefix_bytes: int = 80) -> str:
    """A file name for any title: a readable prefix plus a hash (titles may hold '/', ':', long Japanese)."""
    prefix = re.sub(r'[\x00-\x1f/\\:*?"<>|\s]+', "_", title).strip("._") or "_"
    while len(prefix.encode("utf-8")) > max_prefix_bytes:
        prefix = prefix[:-1]
    digest = hashlib.sha1(title.encode("utf-8")).hexdigest()[:16]
    return f"{prefix}-{digest}.json"


def site_key(api_url: str) -> str:
    parts = urlsplit(api_url)
    return re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.netloc}{parts.path}").strip("_")


class Cache:
    """One JSON file per page or category under `root/<site>/`, written atomically."""

    def __init__(self, root: str | os.PathLike, api_url: str, refresh: bool = False):
        self.root = Path(root) / site_key(api_url)
        self.refresh = refresh

    def path(self, kind: str, title: str) -> Path:
        return self.root / kind / safe_filename(title)

    def load(self, kind: str, title: str) -> dict | None:
        if self.refresh:
            return None
        path = self.path(kind, title)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning("ignoring unreadable cache file %s (%s)", path, error)
            return None
        if data.pop("key", None) != title or data.pop("version", None) != CACHE_VERSION:
            return None
        return data

    def save(self, kind: str, title: str, data: dict) -> None:
        payload = json.dumps({"key": title, "version": CACHE_VERSION, **data}, ensure_ascii=False, indent=1)
        write_text_atomic(self.path(kind, title), payload)


# ---------------------------------------------------------------------------------------------------
# Crawl


def normalize_title(title: str) -> str:
    """What MediaWiki does to a title before looking it up (enough for cache keys): '_' is ' '."""
    return re.sub(r"[ _]+", " ", title).strip()


def category_title(name: str) -> str:
    name = normalize_title(name)
    return name if ":" in name else f"Category:{name}"


def category_members(client: WikiClient, cache: Cache, category: str) -> list[dict]:
    """[{"title", "ns"}] of the category's articles and subcategories, cached answer by answer.

    A listing cut short (by an outage) is cached with its `continue` and resumed from there.
    """
    cached = cache.load("categories", category) or {"members": [], "continue": None}
    if cached.get("complete"):
        return cached["members"]
    params = {
        "list": "categorymembers",
        "cmtitle": category,
        "cmtype": "page|subcat",
        "cmnamespace": f"{NS_MAIN}|{NS_CATEGORY}",
        "cmprop": "ids|title|type",
        "cmlimit": "max",
    }
    members = cached["members"]
    for data in client.query(params, start=cached.get("continue")):
        for member in (data.get("query") or {}).get("categorymembers", []):
            ns = member.get("ns")
            if ns is None:  # a server that leaves out ns: fall back on type, then on the title
                is_category = member.get("type") == "subcat" or member["title"].startswith(("Category:", "カテゴリ:"))
                ns = NS_CATEGORY if is_category else NS_MAIN
            members.append({"title": member["title"], "ns": int(ns)})
        continuation = _continuation(data)
        cache.save("categories", category, {"members": members, "continue": continuation, "complete": not continuation})
    return members


def crawl_category_tree(client: WikiClient, cache: Cache, root: str, depth: int) -> tuple[list[str], list[str]]:
    """(article titles, categories visited), breadth first to `depth` subcategory levels, each once."""
    articles, seen_articles = [], set()
    visited, frontier = [], [category_title(root)]
    seen_categories = set(frontier)
    for level in range(depth + 1):
        next_frontier = []
        for category in frontier:
            visited.append(category)
            for member in category_members(client, cache, category):
                title = member["title"]
                if member["ns"] == NS_MAIN and title not in seen_articles:
                    seen_articles.add(title)
                    articles.append(title)
                elif member["ns"] == NS_CATEGORY and title not in seen_categories and level < depth:
                    seen_categories.add(title)
                    next_frontier.append(title)
        frontier = next_frontier
    return articles, visited


def _title_batches(titles: list[str]):
    batch, size = [], 0
    for title in titles:
        length = len(title.encode("utf-8")) * 3 + 3  # percent-encoded, with its '|'
        if batch and (len(batch) == TITLES_PER_REQUEST or size + length > MAX_TITLES_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(title)
        size += length
    if batch:
        yield batch


def _resolve(title: str, aliases: dict[str, str]) -> str:
    seen = {title}
    while title in aliases and aliases[title] not in seen:
        title = aliases[title]
        seen.add(title)
    return title


def _page_record(page: dict, text_format: str) -> dict:
    revid = page.get("lastrevid")
    if revid is None and page.get("revisions"):
        revid = page["revisions"][0].get("revid")
    if text_format == "wikitext":
        text = None
        if page.get("revisions"):
            revision = page["revisions"][0]
            slot = (revision.get("slots") or {}).get("main", revision)
            text = _string(slot.get("content", slot.get("*")))
    else:
        text = _string(page.get("extract"))
    return {
        "title": page["title"],
        "ns": page.get("ns", NS_MAIN),
        "pageid": page.get("pageid"),
        "revid": revid,
        "url": page.get("fullurl") or page.get("canonicalurl"),
        "text": text,
        "text_format": text_format,
        "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


class TextSource:
    """The props that give a page's text: TextExtracts' plain text, or wikitext where it is missing."""

    # exlimit=1: "multiple extracts can only be returned if exintro is set"; the rest come by `continue`.
    EXTRACTS = {"prop": "extracts|info", "explaintext": "1", "exsectionformat": "wiki", "exlimit": "1", "inprop": "url"}
    WIKITEXT = {"prop": "revisions|info", "rvprop": "ids|content", "rvslots": "main", "inprop": "url"}

    def __init__(self):
        self.format = "extract"

    @property
    def params(self) -> dict:
        return self.EXTRACTS if self.format == "extract" else self.WIKITEXT


def _extracts_unsupported(data: dict) -> bool:
    return any("extracts" in warning and ("Unrecognized" in warning or "nrecognised" in warning) for warning in _warnings(data))


def _cached_page(cache: Cache, title: str) -> dict | None:
    """The page record cached under `title`, following a cached redirect; None if not cached."""
    entry = cache.load("pages", title)
    if entry is not None and "redirect" in entry:
        target = cache.load("pages", entry["redirect"])
        entry = target if target is not None and "redirect" not in target else None
    return entry


def fetch_pages(client: WikiClient, cache: Cache, titles: list[str], progress=None) -> dict[str, dict]:
    """{requested title: page record or {"missing": True, ...}}; redirects followed, each page fetched once.

    Titles go 50 to a request with prop=extracts|info; the server sends one extract per answer and
    `continue`s. Page records are cached as soon as their text arrives, so an interrupted run loses at
    most the page in flight. When the first answer of a batch shows that some titles lead (through a
    redirect) to pages already fetched, the batch is asked again without them instead of fetching them
    twice (only the extract sent with that first answer can be one already fetched). TextExtracts' rendered plain text is used; a wiki without TextExtracts is read as wikitext
    (converted later by `cthulhu_sft.examples.wikitext_to_text`).
    """
    results, todo, done = {}, [], {}
    for title in dict.fromkeys(normalize_title(title) for title in titles):
        entry = _cached_page(cache, title)
        if entry is None:
            todo.append(title)
        else:
            results[title] = entry
            if progress:
                progress.update(1)
    source = TextSource()
    for batch in _title_batches(todo):
        results.update(_fetch_batch(client, cache, batch, source, done, progress))
    return results


def _fetch_batch(client, cache, batch: list[str], source: TextSource, done: dict, progress) -> dict[str, dict]:
    """Fetches one batch of titles; `done` (final title → record) collects the pages of the whole run."""
    aliases, bad, pages, reported = {}, {}, {}, set()
    wanted = batch
    while wanted:
        params = {**source.params, "redirects": "1", "titles": "|".join(wanted)}
        wanted, asked, fresh = [], [], set()
        for data in client.query(params):
            if source.format == "extract" and _extracts_unsupported(data):
                logger.warning("%s has no TextExtracts (prop=extracts); reading wikitext instead", client.api_url)
                source.format = "wikitext"
                return _fetch_batch(client, cache, batch, source, done, progress)
            query = data.get("query") or {}
            for key in ("normalized", "converted", "redirects"):
                for item in query.get(key) or []:
                    aliases[item["from"]] = item["to"]
            for page in _pages(query):
                title = page.get("title")
                if title is None:
                    continue
                if title not in asked:
                    asked.append(title)
                if title in done and title not in fresh:
                    continue
                if _flag(page, "missing") or _flag(page, "invalid") or _flag(page, "special"):
                    reason = page.get("invalidreason") or ("missing" if _flag(page, "missing") else "invalid")
                    bad[title] = {"title": title, "missing": True, "reason": str(reason)}
                    continue
                merged = pages.setdefault(title, {})
                merged.update({name: value for name, value in page.items() if not (name == "revisions" and name in merged)})
                record = _page_record(merged, source.format)
                has_info = "lastrevid" in merged or source.format == "wikitext"  # revisions carry the revid
                if record["text"] is not None and has_info and title not in done:
                    cache.save("pages", title, record)
                    done[title] = record
                    fresh.add(title)
                    if progress:
                        progress.update(1)
                        reported.add(title)
            if not _continuation(data):
                break
            # Pages still to come that an earlier batch (or run) already has: ask again without them.
            pending = [title for title in asked if title not in fresh and title not in bad]
            for title in pending:
                if title not in done and (cached := _cached_page(cache, title)) is not None:
                    done[title] = cached
            if any(title in done for title in pending):
                wanted = [title for title in pending if title not in done]
                break
    results = {}
    for requested in batch:
        final = _resolve(requested, aliases)
        if final in done:
            record = done[final]
        elif final in pages:  # the server ended the batch without its text: keep that answer
            record = {**_page_record(pages[final], source.format)}
            record["text"] = record["text"] or ""
            cache.save("pages", final, record)
            done[final] = record
        else:
            record = bad.get(final) or {"title": final, "missing": True, "reason": "not in the answer"}
        if progress and not (requested == final and final in reported):
            progress.update(1)
        if final != requested:
            cache.save("pages", requested, {"redirect": final} if "missing" not in record else record)
        elif "missing" in record:
            cache.save("pages", requested, record)
        results[requested] = record
    return results
