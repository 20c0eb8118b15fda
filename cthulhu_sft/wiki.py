"""A polite, resumable MediaWiki Action API client: category crawl, page text and aliases, cached page by page.

It follows the API's documented behaviour (API:Query, API:Continue, API:Categorymembers, TextExtracts,
API:Redirects, API:Langlinks):
  * `formatversion=2` answers; every request follows `continue` until the server stops sending it (the
    server decides how much an answer holds: TextExtracts gives one whole-page extract per answer);
  * a page's other names (its redirects, its English interlanguage title) come in the same answers as its
    text; the names in its lead's first parentheses are read from the text (page_aliases);
  * categories and pages are known by page id and by the titles the server reports (normalised: a stock
    Japanese wiki calls `Category:X` `カテゴリ:X`), never by the string the user typed;
  * a server that keeps asking to continue without sending anything new is stopped with an error that
    names the category or the pages;
  * `maxlag=5`, a descriptive User-Agent, serial requests at a polite interval; faults (refused or dropped
    connections, 429, 5xx, maxlag) are retried by urllib3's `Retry` mounted on the requests session,
    honouring Retry-After up to a cap (a longer wait asked is an error that quotes it);
  * every try is bounded in time (to the answer's last byte) and every answer in size; an answer of an
    unexpected shape is an error that says what, not a traceback.
Each page (and each category listing, answer by answer) is cached as one JSON file as soon as it arrives,
so a second run makes no request and an interrupted crawl resumes where it stopped.
"""

import hashlib
import json
import logging
import os
import re
import signal
import threading
import time
import unicodedata
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import (
    ConnectTimeoutError,
    InvalidHeader,
    MaxRetryError,
    ProtocolError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.util.retry import Retry

from .files import remove_stale_temporaries, write_text_atomic

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://ja.wikipedia.org/w/api.php"
DEFAULT_USER_AGENT = (
    f"cthulhu-sft/0.1 (https://github.com/cthulhu-sft/cthulhu-sft; cthulhu-sft@users.noreply.github.com) "
    f"python-requests/{requests.__version__}"
)
MAXLAG = 5  # seconds; what Wikimedia recommends for non-interactive clients
TITLES_PER_REQUEST = 50  # the API's limit for `titles` (500 for bots, which we are not)
MAX_TITLES_BYTES = 4000  # keep the URL short enough for proxies, whatever the titles' length
# MediaWiki sends something new in every answer it continues (a member, a page's extract). These bound a
# server that does not: answers in a row with nothing new, and answers per category listing (500 members each).
MAX_IDLE_ANSWERS = 5
MAX_LISTING_REQUESTS = 200
NS_MAIN, NS_CATEGORY = 0, 14
# Each try of a request: connecting, then at most --timeout from sending it to the answer's last byte.
CONNECT_TIMEOUT = 10.0
MAX_RETRY_AFTER = 120.0  # seconds; a server that asks to wait longer (Retry-After) is an error, not a silent sleep
MAX_ANSWER_BYTES = 32 * 1024 * 1024  # one answer carries one whole-page extract: far larger is not an api.php
READ_SIZE = 64 * 1024
CACHE_VERSION = 2  # 2: pages carry their aliases
EXTRACT_PARAMS = {
    "prop": "extracts|info|redirects|langlinks",  # the text and, in the same answers, the page's other names
    "explaintext": "1",
    "exsectionformat": "wiki",
    "exlimit": "1",  # whole-page extracts come one per answer whatever is asked; more only earns a warning
    "inprop": "url",
    "rdprop": "title",
    "rdnamespace": str(NS_MAIN),
    "rdshow": "!fragment",  # a redirect to a section names the section, not the page
    "rdlimit": "max",
    "lllang": "en",  # the English interlanguage title
    "lllimit": "max",
    "redirects": "1",
}
LIST_PROPS = {"redirects": "rdcontinue", "langlinks": "llcontinue"}  # list props of a page, and their continuation
MAX_PAGE_CHARS = 500_000  # a page's text past this is cut (at a paragraph) and counted: ja.wikipedia's longest are shorter
MAX_NAME_CHARS = 40  # a name in the lead's parentheses; longer items are explanations, not names


class WikiError(RuntimeError):
    """The wiki could not be read (after retries), or answered something this client cannot use."""


class CategoryError(WikiError):
    """The category asked for gives nothing to crawl (empty, not a category, no articles): a fix of the input,
    not a retry, is needed."""


# ---------------------------------------------------------------------------------------------------
# HTTP


class PoliteRetry(Retry):
    """urllib3's Retry, which also retries MediaWiki's maxlag answer and waits at most `max_wait` seconds.

    MediaWiki answers a request over `maxlag` with HTTP 200, an error body and a Retry-After header
    (Manual:Maxlag_parameter); no other read answer carries Retry-After. So a 200 with Retry-After is
    retried like a 503 with one, after the wait the server asks for, from the same retry budget.
    A server that asks for more than `max_wait` seconds is not waited for: its answer comes back at once
    (urllib3 gives up as when retries run out), and WikiClient.get reports what it asked.
    """

    RETRY_AFTER_STATUS_CODES = Retry.RETRY_AFTER_STATUS_CODES | {200}

    def __init__(self, *args, max_wait: float = MAX_RETRY_AFTER, on_wait=None, on_retry=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_wait, self.on_wait, self.on_retry = max_wait, on_wait, on_retry

    def new(self, **kwargs):
        retry = super().new(**kwargs)
        retry.max_wait, retry.on_wait, retry.on_retry = self.max_wait, self.on_wait, self.on_retry
        return retry

    def get_retry_after(self, response):
        try:
            return super().get_retry_after(response)
        except InvalidHeader:  # e.g. "Retry-After: soon": the backoff applies instead
            return None

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        wait = self.get_retry_after(response) if response is not None else None
        if wait is not None and wait > self.max_wait:
            raise MaxRetryError(_pool, url, ResponseError(f"Retry-After over {self.max_wait:g} s"))
        return super().increment(method, url, response, error, _pool, _stacktrace)

    def sleep(self, response=None):
        """Waits before the next try (between the hooks that end one try and start the next)."""
        if self.on_wait:
            self.on_wait()
        wait = self.get_retry_after(response) if response is not None and self.respect_retry_after_header else None
        if wait:
            fault = "maxlag" if response.status == 200 else f"HTTP {response.status}"
            logger.info("%s: waiting %.0f s, as the server asks (Retry-After)", fault, wait)
        super().sleep(response)
        if self.on_retry:
            self.on_retry()


def _warnings(data: dict) -> list[str]:
    """The answer's warnings, {module: {"warnings": text}} in formatversion 2, as 'module: text'."""
    return [f"{module}: {value.get('warnings')}" for module, value in (data.get("warnings") or {}).items()]


def _body_snippet(text: str) -> str:
    text = text[:2000]
    title = re.search(r"<title[^>]*>(.*?)</title>", text, re.S | re.I)
    if title:
        text = title.group(1)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text)).strip()[:200]


def _reason(error: Exception) -> str:
    """The innermost cause urllib3 gives (refused, name not resolved, timed out), without the pool and the URL."""
    while isinstance(error.args[0] if error.args else None, Exception):
        error = error.args[0]
    error = getattr(error, "reason", None) or error
    text = re.sub(r"^<[^>]+>: ", "", re.sub(r" with url: \S+", "", str(error)))
    return re.sub(r"^HTTPS?Connection(Pool)?\([^)]*\): ", "", text)


class AnswerTooSlow(Exception):
    """A try of a request ran past its deadline (raised by the SIGALRM handler, or between reads)."""


def _too_slow(signum, frame):
    raise AnswerTooSlow


class WikiClient:
    """Serial GET requests to one api.php, with retries, a polite interval, bounded answers and a request count.

    Each try of a request, from sending it to the last byte of the answer, takes at most `timeout` seconds, and
    an answer holds at most `max_bytes` (decoded); connecting may take `CONNECT_TIMEOUT` more. A wiki that cannot
    be reached at the first request is reported at once: retrying a refused connection or an unknown host name
    only delays the message. Once the wiki has answered, dropped connections are retried like 5xx answers.
    """

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        user_agent: str | None = None,
        retries: int = 5,
        backoff_factor: float = 1.0,
        interval: float = 0.5,
        timeout: float = 60.0,
        max_retry_after: float = MAX_RETRY_AFTER,
        max_bytes: int = MAX_ANSWER_BYTES,
    ):
        self.api_url = api_url
        self.interval = interval
        self.timeout = timeout
        self.max_retry_after = max_retry_after
        self.max_bytes = max_bytes
        self.requests = 0  # HTTP requests sent, retries included
        self.retries = 0
        self.answered = False  # whether the wiki has answered once: connection failures are retried from then on
        self._last_request = 0.0
        self._try_started = 0.0
        self._alarm = False  # whether this request's tries are bounded by SIGALRM
        self._warned = set()
        self.retry = PoliteRetry(
            total=retries,
            backoff_factor=backoff_factor,
            status_forcelist=(429, 500, 502, 503, 504),
            raise_on_status=False,  # the last answer comes back, so its error can be reported
            max_wait=max_retry_after,
            on_wait=self._end_try,
            on_retry=self._start_try,
        )
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent or DEFAULT_USER_AGENT
        self.adapter = HTTPAdapter(max_retries=self.retry.new(connect=0))
        self.session.mount("http://", self.adapter)
        self.session.mount("https://", self.adapter)

    def _wait_turn(self) -> None:
        wait = self._last_request + self.interval - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        self._last_request = time.monotonic()

    def _start_try(self) -> None:
        """A try begins: its deadline is `timeout` from now, kept by SIGALRM where it may be used (a server may
        trickle its status line and headers too), and by the body's reads themselves (_read) everywhere."""
        self._try_started = time.monotonic()
        if self._alarm:
            signal.setitimer(signal.ITIMER_REAL, self.timeout)

    def _end_try(self) -> None:
        if self._alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)

    @staticmethod
    def _alarm_free() -> bool:
        """Whether SIGALRM may be used: in the main thread, on a system that has it, when no timer is set."""
        return (hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
                and signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0))

    def _read(self, response: requests.Response) -> bytes:
        """The whole body, decoded, within the try's `timeout` and at most `max_bytes`.

        Each read takes what one receive brings (read1), after setting the socket's timeout to the time left, so
        a server that trickles a byte a second is cut off at the deadline, not after the gap between two bytes.
        """
        deadline, body = self._try_started + self.timeout, bytearray()
        connection = getattr(response.raw, "connection", None)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AnswerTooSlow
            if connection is not None and connection.sock is not None:
                connection.sock.settimeout(left)
            try:
                chunk = response.raw.read1(READ_SIZE, decode_content=True)
            except (ReadTimeoutError, TimeoutError):
                raise AnswerTooSlow from None
            if not chunk:
                return bytes(body)
            body += chunk
            if len(body) > self.max_bytes:
                raise WikiError(f"{self.api_url}: the answer is larger than {self.max_bytes:,} bytes; stopping "
                                "(is --api_url the wiki's api.php?)")

    def get(self, params: dict) -> dict:
        """One API call (retried by urllib3): the decoded JSON answer, or a WikiError that says why not."""
        params = {"format": "json", "formatversion": "2", "maxlag": str(MAXLAG), **params}
        self._wait_turn()
        response, self._alarm = None, self._alarm_free()
        previous = signal.signal(signal.SIGALRM, _too_slow) if self._alarm else None
        try:
            self._start_try()
            response = self.session.get(self.api_url, params=params, stream=True,
                                        timeout=(min(CONNECT_TIMEOUT, self.timeout), self.timeout))
            with response:
                body = self._read(response)
        except AnswerTooSlow:
            if response is None:  # still in the status line or headers; urllib3's retries of this try are lost
                self.requests += 1
            else:
                self._count(response)
            raise WikiError(f"{self.api_url}: no complete answer within --timeout {self.timeout:g} s "
                            "(the server sends too slowly); stopping") from None
        except (requests.exceptions.RequestException, ProtocolError) as error:
            raise WikiError(self._failure(error, response)) from None
        finally:
            if self._alarm:
                self._end_try()
                signal.signal(signal.SIGALRM, previous)
        history = self._count(response)
        if not self.answered:
            self.answered = True
            self.adapter.max_retries = self.retry
        retried = f" (after {len(history)} retries)" if history else ""
        text = body.decode("utf-8", errors="replace")
        wait = response.headers.get("Retry-After")
        if wait is not None and (self.retry.get_retry_after(response.raw) or 0) > self.max_retry_after:
            raise WikiError(f"{self.api_url} answered HTTP {response.status_code}{retried} and asks to wait before the "
                            f"next request (Retry-After: {wait.strip()[:40]}), longer than the {self.max_retry_after:g} s "
                            "this client waits (--max_retry_after); try again later")
        if response.status_code != 200:
            hint = " (Wikimedia refuses requests without a descriptive --user_agent)" if response.status_code == 403 else ""
            raise WikiError(f"{self.api_url} answered HTTP {response.status_code}{retried}: {_body_snippet(text)}{hint}")
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            kind = response.headers.get("Content-Type", "unknown type")
            raise WikiError(f"{self.api_url}: the answer is not JSON ({kind}): {_body_snippet(text)!r}; "
                            "is --api_url the wiki's api.php?")
        if isinstance(data.get("error"), dict):
            error = data["error"]
            shown = {key: value for key, value in params.items() if key not in ("titles", "format")}
            kind = CategoryError if error.get("code") == "invalidcategory" else WikiError  # e.g. "Foo:Bar"
            raise kind(f"{self.api_url}: API error '{error.get('code')}'{retried}: {error.get('info')} (request {shown})")
        for warning in _warnings(data):
            if warning not in self._warned:
                self._warned.add(warning)
                logger.warning("API warning: %s", warning)
        return data

    def _failure(self, error: Exception, response: requests.Response | None) -> str:
        """What to say when no answer could be read, counting the tries it took."""
        reason = _reason(error)
        if response is not None:  # the answer began, then broke: outside urllib3's retries
            self._count(response)
            return f"{self.api_url}: the connection broke while the answer was being read ({reason})"
        unreachable = isinstance(getattr(error.args[0] if error.args else None, "reason", None), ConnectTimeoutError)
        tries = 0 if unreachable and not self.answered else self.adapter.max_retries.total  # urllib3 spent them
        self.requests += 1 + tries
        self.retries += tries
        if not tries:
            return f"cannot reach {self.api_url}: {reason} (no network, or a wrong --api_url?)"
        return f"{self.api_url}: no answer after {tries} retries: {reason}"

    def _count(self, response: requests.Response) -> tuple:
        """Counts the request and urllib3's retries of it; returns their history."""
        history = response.raw.retries.history if response.raw.retries else ()
        self.requests += 1 + len(history)
        self.retries += len(history)
        if history:
            logger.info("retried %d time(s) after %s", len(history),
                        ", ".join(str(item.status or type(item.error).__name__) for item in history))
        return history

    def query(self, params: dict, start: dict | None = None):
        """Yields the answers of an action=query request, following `continue` until the server stops.

        `start` is a `continue` object saved from an earlier answer, to resume from there.
        """
        continuation = start or {}
        while True:
            data = self.get({"action": "query", **params, **continuation})
            problem = answer_shape(data)
            if problem:
                raise WikiError(f"{self.api_url}: an answer of an unexpected shape ({problem}); is --api_url a "
                                "MediaWiki api.php?")
            yield data
            continuation = data.get("continue")
            if not continuation:
                return


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


def _wrong_fields(data: dict, fields: dict) -> str | None:
    """What is wrong with `data`'s fields ({name: allowed types}), or None."""
    for name, types in fields.items():
        if not isinstance(data.get(name), types) or (types is int and isinstance(data.get(name), bool)):
            return f"'{name}' is {type(data.get(name)).__name__ if name in data else 'missing'}"
    return None


ANSWER_LISTS = {"pages": {"title": str}, "normalized": {"from": str, "to": str}, "redirects": {"from": str, "to": str},
                "categorymembers": {"title": str, "ns": int}}  # what this client reads of an answer's lists
PAGE_FIELDS = {"ns": int, "pageid": int, "lastrevid": int, "fullurl": str, "extract": str}  # where present


def answer_shape(data: dict) -> str | None:
    """What in an action=query answer this client cannot read (formatversion 2), or None."""
    for key in ("continue", "query"):
        if key in data and not isinstance(data[key], dict):
            return f"'{key}' is {type(data[key]).__name__}"
    query = data.get("query") or {}
    for name, fields in ANSWER_LISTS.items():
        items = query.get(name, [])
        if not isinstance(items, list):
            return f"query.{name} is {type(items).__name__}"
        for item in items:
            problem = "an item is not an object" if not isinstance(item, dict) else _wrong_fields(item, fields)
            if problem:
                return f"query.{name}: {problem}"
    for page in query.get("pages", []):
        present = {name: types for name, types in PAGE_FIELDS.items() if name in page}
        if problem := _wrong_fields(page, present):
            return f"query.pages: {problem} in {page['title']}"
        for prop in LIST_PROPS:
            items = page.get(prop, [])
            if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
                return f"query.pages: '{prop}' of {page['title']} is not a list of objects"
    return None


def page_shape(data: dict) -> str | None:
    """What makes a cached page unusable (a redirect, a missing page or a page record), or None."""
    if "redirect" in data:
        return _wrong_fields(data, {"redirect": str})
    if data.get("missing") is True:
        return _wrong_fields(data, {"title": str, "text": str})
    problem = _wrong_fields(data, {"title": str, "text": str, "ns": int, "revid": (int, type(None)),
                                   "url": (str, type(None)), "fetched": str, "aliases": list})
    if problem is None and "cut_chars" in data:
        problem = _wrong_fields(data, {"cut_chars": int, "cut_limit": int})
    if problem is None and not all(isinstance(alias, str) for alias in data["aliases"]):
        problem = "'aliases' holds a non-string"
    return problem


def listing_shape(data: dict) -> str | None:
    """What makes a cached category listing unusable, or None: `members: null` is no empty category."""
    problem = _wrong_fields(data, {"title": str, "members": list, "continue": (dict, type(None))})
    for member in data.get("members") if problem is None else ():
        problem = ("a member is not an object" if not isinstance(member, dict) else
                   _wrong_fields(member, {"title": str, "ns": int, "pageid": (int, type(None))}))
        if problem:
            return f"members: {problem}"
    return problem


SHAPES = {"pages": page_shape, "categories": listing_shape}


class Cache:
    """One JSON file per page or category listing under `root/<site>/`, written atomically.

    One run at a time per folder (prepare_data.py holds files.one_run_at_a_time on --cache_dir): temporary files
    that a killed run left (`.name.*.tmp`, see files.write_text_atomic) are removed when the cache is opened.
    A file that cannot be read, or holds JSON of another shape, is warned about with its path and fetched again.
    """

    def __init__(self, root: str | os.PathLike, api_url: str, refresh: bool = False):
        self.root = Path(root) / site_key(api_url)
        self.refresh = refresh
        self.saved = 0  # files written since opened: what an interrupted run leaves to resume from
        remove_stale_temporaries(self.root)

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
            logger.warning("ignoring unreadable cache file %s (%s); fetching it again", path, error)
            return None
        if not isinstance(data, dict) or data.pop("key", None) != title or data.pop("version", None) != CACHE_VERSION:
            if not isinstance(data, dict):
                logger.warning("ignoring cache file %s (a JSON %s, not an object); fetching it again", path,
                               type(data).__name__)
            return None
        problem = SHAPES[kind](data)
        if problem:
            logger.warning("ignoring cache file %s (%s); fetching it again", path, problem)
            return None
        return data

    def save(self, kind: str, title: str, data: dict) -> None:
        payload = json.dumps({"key": title, "version": CACHE_VERSION, **data}, ensure_ascii=False, indent=1)
        write_text_atomic(self.path(kind, title), payload)
        self.saved += 1


# ---------------------------------------------------------------------------------------------------
# Categories


def normalize_title(title: str) -> str:
    """What MediaWiki does to any title before looking it up (enough for cache keys): '_' is ' '."""
    return re.sub(r"[ _]+", " ", title).strip()


def category_title(name: str) -> str:
    """`name` with the namespace prefix the API needs; 'Category:' is understood by every wiki."""
    name = normalize_title(name)
    return name if ":" in name else f"Category:{name}"


def _identity(page: dict):
    """What tells pages apart: the page id; the server's title for a category that has members but no page."""
    return page.get("pageid") or page["title"]


def category_members(client: WikiClient, cache: Cache, category: str) -> dict:
    """{"title": the server's title for `category`, "members": [{"pageid", "ns", "title"}]}, cached answer by answer.

    The category itself is asked as `titles` in the same request, so the first answer also says what the
    server calls it. A listing cut short (by an outage) is cached with its `continue` and resumed from there.
    """
    listing = cache.load("categories", category) or {}
    if listing.get("complete"):
        return listing
    if "title" not in listing:  # nothing cached (or a cache from before titles were kept): from the start
        listing = {"title": category, "pageid": None, "members": [], "continue": None}
    params = {"list": "categorymembers", "cmtitle": category, "cmtype": "page|subcat", "cmprop": "ids|title",
              "cmlimit": "max", "titles": category}
    # Namespaces are filtered here, not with cmnamespace: in miser mode that filter leaves answers empty.
    seen = {_identity(member) for member in listing["members"]}
    idle = 0
    for count, data in enumerate(client.query(params, start=listing["continue"]), 1):
        query = data.get("query") or {}
        for page in query.get("pages") or []:  # only in the first answer
            listing.update(title=page["title"], pageid=page.get("pageid"))  # no id: the category has no page
        new = [member for member in query.get("categorymembers") or [] if _identity(member) not in seen]
        seen.update(_identity(member) for member in new)
        listing["members"] += [{"pageid": member.get("pageid"), "ns": member["ns"], "title": member["title"]}
                               for member in new if member["ns"] in (NS_MAIN, NS_CATEGORY)]
        listing["continue"] = data.get("continue")
        listing["complete"] = not listing["continue"]
        cache.save("categories", category, listing)
        idle = 0 if new else idle + 1
        if listing["continue"] and (idle >= MAX_IDLE_ANSWERS or count >= MAX_LISTING_REQUESTS):
            raise WikiError(f"{client.api_url}: the listing of {listing['title']} did not end: the server still asked "
                            f"to continue after {count} answers ({idle} in a row without a new member); stopping")
    return listing


def crawl_category_tree(client: WikiClient, cache: Cache, root: str, depth: int) -> tuple[list[str], list[str]]:
    """(article titles, categories listed), breadth first to `depth` subcategory levels, each once.

    Pages and categories are told apart by page id, so a cycle back to the root does not list it again,
    however the root was written.
    """
    articles, visited, seen = [], [], set()
    frontier = [category_title(root)]
    for level in range(depth + 1):
        next_frontier = []
        for category in frontier:
            listing = category_members(client, cache, category)
            if level == 0 and not listing["members"]:
                raise CategoryError(f"{client.api_url}: the listing of {listing['title']} is empty: it has no articles "
                                "and no subcategories (is the category name right?)")
            visited.append(listing["title"])
            seen.add(_identity(listing))
            for member in listing["members"]:
                if _identity(member) in seen or (member["ns"] == NS_CATEGORY and level == depth):
                    continue
                seen.add(_identity(member))
                (articles if member["ns"] == NS_MAIN else next_frontier).append(member["title"])
        frontier = next_frontier
    if not articles:
        raise CategoryError(f"{client.api_url}: {visited[0]} and its subcategories to depth {depth} list no articles")
    return articles, visited


# ---------------------------------------------------------------------------------------------------
# Pages


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


def _resolve(title: str, targets: dict[str, str]) -> str:
    """Where `title` leads through the answers' `normalized` and `redirects` (redirects may chain)."""
    seen = {title}
    while title in targets and targets[title] not in seen:
        title = targets[title]
        seen.add(title)
    return title


def _missing(page: dict) -> bool:
    return bool(page.get("missing") or page.get("invalid") or page.get("special"))


def _record(page: dict, max_chars: int) -> dict:
    """A page's record from its merged answers: info (first answer), extract (the answer that carried it), names."""
    if _missing(page):
        reason = page.get("invalidreason") or ("special page" if page.get("special") else "missing")
        return {"title": page["title"], "missing": True, "reason": reason, "text": "", "aliases": []}
    text, cut = _cut(page.get("extract", ""), max_chars)
    record = {
        "title": page["title"],
        "ns": page.get("ns", NS_MAIN),
        "pageid": page.get("pageid"),
        "revid": page.get("lastrevid"),
        "url": page.get("fullurl"),
        "text": text,
        "aliases": page_aliases(page["title"], page.get("redirects"), page.get("langlinks"), text),
        "fetched": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if cut:
        record.update(cut_chars=cut, cut_limit=max_chars)
    return record


def _cut(text: str, limit: int) -> tuple[str, int]:
    """`text` up to `limit` characters, cut at the last paragraph (else sentence) before it; characters left out."""
    if len(text) <= limit:
        return text, 0
    end = text.rfind("\n\n", 0, limit)
    if end < limit // 2:
        end = text.rfind("。", 0, limit) + 1 or limit
    kept = text[:end].rstrip()
    return kept, len(text) - len(kept)


# ---------------------------------------------------------------------------------------------------
# Aliases: a page's other names


def _key(name: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", name)).strip().casefold()


def _unqualified(name: str) -> str:
    """A title without its disambiguating qualifier: 'ダゴン (クトゥルフ神話)' → 'ダゴン'."""
    return re.sub(r"\s*[(（][^()（）]*[)）]$", "", name).strip() or name.strip()


def page_aliases(title: str, redirects, langlinks, text: str) -> list[str]:
    """The page's other names, each once, never the title: the title without its qualifier, the redirects to
    it and its English interlanguage title (without theirs), and the names in the lead's first parentheses."""
    names = [item.get("title") for item in redirects or [] if isinstance(item, dict)]
    names += [item.get("title") for item in langlinks or [] if isinstance(item, dict) and item.get("lang") == "en"]
    names = [_unqualified(name) for name in [title, *names] if isinstance(name, str) and name.strip()]
    names += lead_names(text, [title, *names])
    aliases, seen = [], {_key(title)}
    for name in names:
        if _key(name) not in seen:
            seen.add(_key(name))
            aliases.append(name)
    return aliases


def lead_names(text: str, subjects: list[str]) -> list[str]:
    """The names in the first parentheses of the lead, when they follow the page's name.

    'クトゥルフ（Cthulhu, クトゥルー）は…' → ['Cthulhu', 'クトゥルー']; '英: X' → 'X'; dates, and explanations
    longer than MAX_NAME_CHARS, are not names. A parenthesis after anything but one of `subjects` (the title, the
    other names) is not about the subject: 'ダゴンは、深きものども（ディープ・ワンズ）' gives nothing.
    """
    lead = text.split("\n==", 1)[0].lstrip()
    match = re.match(r"([^\n。、（(]{1,80})[（(]", lead)
    if not match or _key(match.group(1).strip(" 「」『』\"'")) not in {_key(subject) for subject in subjects}:
        return []
    depth, inner = 0, []
    for char in lead[match.end() - 1:]:
        depth += (char in "（(") - (char in "）)")
        if depth == 0:
            break
        inner.append(char)
    names = []
    for item in re.split(r"[、，,；;]|または|もしくは|あるいは", "".join(inner[1:])):
        item = re.sub(r"^\s*(?:[\u3040-\u30ff\u4e00-\u9fff]{1,8}|[A-Za-z]{2,3})\s*[:：]\s*", "", item)  # '英: ', '略称：'
        item = item.strip(" 　「」『』\"'")
        if item and len(item) <= MAX_NAME_CHARS and _name_like(item):
            names.append(item)
    return names


def _name_like(item: str) -> bool:
    """A name or a reading, not a date or a phrase: Latin letters ('Howard Phillips Lovecraft', "R'lyeh"), kana
    alone (a reading: 'くとぅるふ', 'クトゥルフしんわ'), or kanji and katakana without hiragana ('旧支配者');
    hiragana among kanji is a phrase ('風の精とされる存在')."""
    latin = all(char in " '’.-&" or (char.isalpha() and ord(char) < 0x2000) for char in item)
    kana = re.fullmatch(r"[\u3041-\u3096\u30a1-\u30faー・＝= ]+", item)
    kanji = re.fullmatch(r"[\u4e00-\u9fff々\u30a1-\u30faー・＝= ]+", item)
    return bool(latin and re.search(r"[^\W\d_]", item) or kana or kanji)


def _cached_page(cache: Cache, title: str) -> dict | None:
    """The page record cached under `title`, following a cached redirect; None if not cached."""
    entry = cache.load("pages", title)
    if entry is not None and "redirect" in entry:
        target = cache.load("pages", entry["redirect"])
        entry = target if target is not None and "redirect" not in target else None
    return entry


def fetch_pages(client: WikiClient, cache: Cache, titles: list[str], progress=None,
                max_chars: int = MAX_PAGE_CHARS) -> dict[str, dict]:
    """{requested title: page record, or {"title", "missing": True, "reason", "text": ""}}, redirects followed.

    A page record: title, ns, pageid, revid, url, text (cut at a paragraph before `max_chars`), aliases
    (page_aliases), fetched; `cut_chars` and `cut_limit` where the text was cut. Titles go 50 to a request with
    prop=extracts|info|redirects|langlinks; the server sends one page's extract per answer and continues, the
    other names coming in the same answers. Each page is cached as soon as its text and names have arrived, so
    an interrupted run loses at most the page in flight, and a rerun asks nothing (unless --max_page_chars
    changed for a page it cuts).
    """
    results, todo = {}, []
    for title in dict.fromkeys(normalize_title(title) for title in titles):
        record = _cached_page(cache, title)
        if record is not None and (record.get("cut_limit", max_chars) != max_chars or len(record["text"]) > max_chars):
            record = None  # cut at another --max_page_chars
        if record is None:
            todo.append(title)
        else:
            results[title] = record
            if progress:
                progress.update(1)
    done = {}  # final title → record, for the pages of the whole run
    for batch in _title_batches(todo):
        results.update(_fetch_batch(client, cache, batch, done, progress, max_chars))
    return results


def _fetch_batch(client: WikiClient, cache: Cache, batch: list[str], done: dict, progress,
                 max_chars: int) -> dict[str, dict]:
    """Fetches one batch of titles; `done` (final title → record) collects the pages of the whole run.

    The first answer names every page of the batch, redirects followed. When some were already fetched
    (through another title, by an earlier batch or run), the batch is asked again without them rather
    than receiving their text again: the second request brings an extract as the first did.
    """
    targets, pages, shown, asking, idle = {}, {}, set(), batch, 0
    while asking:
        asked, asking = asking, []
        for number, data in enumerate(client.query({**EXTRACT_PARAMS, "titles": "|".join(asked)}), 1):
            if any("extracts" in text and "nrecognized" in text for text in _warnings(data)):
                raise WikiError(f"{client.api_url} has no TextExtracts extension (prop=extracts), which gives the pages' text")
            new, waiting = _read_answer(data, cache, targets, pages, done, max_chars)
            for title in batch:
                if progress and title not in shown and _resolve(title, targets) in done:
                    shown.add(title)
                    progress.update(1)
            if "continue" not in data:
                break
            if number == 1:
                for title in waiting:
                    if title not in done and (cached := _cached_page(cache, title)) is not None:
                        done[title] = cached
                if any(title in done for title in waiting):
                    asking = [title for title in asked if _resolve(title, targets) not in done]
                    break
            idle = 0 if new else idle + 1
            if idle >= MAX_IDLE_ANSWERS:
                left = [title for title in asked if _resolve(title, targets) not in done]
                raise WikiError(f"{client.api_url}: the server still asked to continue after {idle} answers in a row without "
                                f"the text of a page; stopping (waiting for {', '.join(left[:5])}{' …' * (len(left) > 5)})")
    for title, page in pages.items():  # pages the server sent no text for, and missing ones
        if title not in done:
            done[title] = _record(page, max_chars)
            cache.save("pages", title, done[title])
    results = {}
    for requested in batch:
        final = _resolve(requested, targets)
        if final != requested:
            cache.save("pages", requested, {"redirect": final})
        results[requested] = done.get(final) or {"title": final, "missing": True, "reason": "not in the answer", "text": "",
                                                        "aliases": []}
    if progress:
        progress.update(len(batch) - len(shown))
    return results


def _read_answer(data: dict, cache: Cache, targets: dict, pages: dict, done: dict, max_chars: int) -> tuple[bool, list[str]]:
    """Takes in one answer: where titles lead, each page's fields and names, and the text of a page, cached at once.

    A page is complete when its extract has come and the server continues no list prop (redirects, langlinks);
    with more than rdlimit redirects in a batch, pages wait for the answer that ends them.
    Returns whether something of a page arrived, and the pages still waiting for their text.
    """
    query = data.get("query") or {}
    for item in (query.get("normalized") or []) + (query.get("redirects") or []):
        targets[item["from"]] = item["to"]
    lists_done = not set(data.get("continue") or {}) & set(LIST_PROPS.values())
    new, waiting = False, []
    for page in query.get("pages") or []:
        title, merged = page["title"], pages.setdefault(page["title"], {})
        for prop in LIST_PROPS:  # a list prop's items may be spread over several answers
            items = [item for item in page.get(prop) or [] if item not in merged.get(prop, [])]
            merged[prop] = merged.get(prop, []) + items
            new |= bool(items)
        merged.update({key: value for key, value in page.items() if key not in LIST_PROPS})  # info, then the extract
        new |= "extract" in page and title not in done
        if "extract" not in merged and not _missing(merged):
            waiting.append(title)
    for title, merged in pages.items():
        if lists_done and "extract" in merged and title not in done:
            done[title] = _record(merged, max_chars)
            cache.save("pages", title, done[title])
    return new, waiting
