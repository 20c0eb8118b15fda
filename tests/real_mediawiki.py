"""A real MediaWiki on 127.0.0.1 for tests: Debian's `mediawiki` package (1.39) with TextExtracts and Cite.

`running_wiki(folder)` installs a throwaway wiki in `folder` (SQLite, content language ja, so its namespaces are
MediaWiki's stock Japanese ones: `カテゴリ:`; `en:` an interlanguage prefix), imports PAGES with `maintenance/importTextFiles.php`, runs the job
queue, and serves it with PHP's built-in web server on a free port until the `with` block ends (the server is
stopped then, and killed if it does not stop). Nothing outside `folder` is read or written: the wiki's settings
file is given by `MW_CONFIG_FILE`, never the system's /etc/mediawiki/LocalSettings.php. About 6 s (install.php
2.5 s, the import 2 s, runJobs 1 s, the server's first answer 1 s).

`missing()` says why it cannot run here (no php, no Debian MediaWiki, no SQLite module or TextExtracts), or None.
On Debian 12: `apt-get install --no-install-recommends mediawiki php-cli php-sqlite3` (TextExtracts and Cite ship in
the `mediawiki` package, under /usr/share/mediawiki/extensions-core/).
"""

import ctypes
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

MEDIAWIKI = Path("/usr/share/mediawiki")
EXTENSIONS = ("TextExtracts", "Cite")
ROOT = "クトゥルフ神話"
EMPTY_CATEGORY = "空の分類"

# The wiki's pages, as wikitext. Category links are written in all three ways a Japanese wiki reads them.
PAGES = {
    # The root, inside its own subcategory: a cycle (root → 神格 → root).
    "Category:クトゥルフ神話": "クトゥルフ神話に関する記事の分類。\n[[Category:クトゥルフ神話の神格]]",
    "カテゴリ:クトゥルフ神話の神格": "クトゥルフ神話の神格の分類。\n[[カテゴリ:クトゥルフ神話]]",
    "Category:クトゥルフ神話の作品": "クトゥルフ神話の作品の分類。\n[[category:クトゥルフ神話]]",
    "Category:旧支配者": "旧支配者の分類（二段目の下位分類）。\n[[Category:クトゥルフ神話の神格]]",
    f"Category:{EMPTY_CATEGORY}": "何も属していない分類。",
    # In the root and in a subcategory: crawled once. A footnote, notes sections, ruby-like readings.
    "クトゥルフ": (
        "'''クトゥルフ'''（Cthulhu、クトゥルー、ク・リトル・リトル）は、怪奇作家が創作した架空の神格である<ref>架空の出典の説明文。</ref>。"
        "海底都市ルルイエで眠り続けているとされ、旧支配者（きゅうしはいしゃ）の一柱に数えられる。\n\n"
        "== 概要 ==\n巨大な体と蛸（たこ）に似た頭部を持つ存在として描かれる。夢を通じて人間の心に働きかけるという。\n\n"
        "== 登場作品 ==\n=== 小説 ===\n最初に登場したのは1928年に発表された短編である。その後、多くの作家が作品に取り入れた。\n\n"
        "== 脚注 ==\n=== 注釈 ===\n* 架空の注釈の本文。\n=== 出典 ===\n<references />\n\n"
        "== 参考文献 ==\n* 架空の参考文献の書誌情報。\n\n"
        "== 外部リンク ==\n* 架空の公式サイトの説明。\n\n"
        "[[Category:クトゥルフ神話]]\n[[カテゴリ:クトゥルフ神話の神格]]\n[[en:Cthulhu]]"
    ),
    "ルルイエ": (
        "'''ルルイエ'''（R'lyeh）は、太平洋の底に沈んだとされる架空の都市である。非ユークリッド的な幾何学で造られているという。\n\n"
        "== 特徴 ==\n都市は緑色の石で築かれている。星辰（せいしん）が正しい位置に来ると浮上するとされる。\n\n"
        "[[Category:クトゥルフ神話]]\n[[en:R'lyeh]]"
    ),
    "ネクロノミコン": (
        "'''ネクロノミコン'''は、作中に登場する架空の魔道書である。狂える詩人が著したと設定されている。\n\n"
        "== 来歴 ==\n原題はアラビア語で書かれたとされる。後に複数の言語へ翻訳されたという設定がある。\n\n"
        "[[カテゴリ:クトゥルフ神話]]"
    ),
    "ダゴン (クトゥルフ神話)": (
        "'''ダゴン'''は、深きものども（ディープ・ワンズ）に崇拝される存在である。海に住む巨大な生き物として描かれる。\n\n"
        "[[Category:クトゥルフ神話の神格]]"
    ),
    "ハスター": "'''ハスター'''は、名状しがたいものとも呼ばれる神格である。風に関係づけられることが多い。\n\n[[Category:旧支配者]]",
    "インスマスを覆う影": (
        "'''インスマスを覆う影'''は、寂れた港町を舞台にした中編小説である。語り手は町の秘密を知ることになる。\n\n"
        "[[Category:クトゥルフ神話の作品]]"
    ),
    # A redirect listed in the category beside its target: one article.
    "インスマウスの影": "#REDIRECT [[インスマスを覆う影]]\n[[Category:クトゥルフ神話の作品]]",
    # Not an article: listed, never crawled.
    "Template:クトゥルフ神話": "ナビゲーション用のテンプレート。\n[[Category:クトゥルフ神話]]",
    # Outside the category: for --titles (Cthulhu is a redirect to クトゥルフ).
    "ヨグ＝ソトース": "'''ヨグ＝ソトース'''は、時間と空間に関わる神格である。門にして鍵とも呼ばれる。",
    "Cthulhu": "#REDIRECT [[クトゥルフ]]",
    # The other names of a page: redirects to it (not one to a section), its English link, its lead's parentheses.
    "クトゥルー": "#REDIRECT [[クトゥルフ]]",
    "ルルイエの館": "#REDIRECT [[ルルイエ#特徴]]",
}
# The aliases the crawl finds for them (the English links need the `en` interwiki prefix, added by install()).
ALIASES = {"クトゥルフ": ["Cthulhu", "クトゥルー", "ク・リトル・リトル"], "ルルイエ": ["R'lyeh"], "ハスター": []}
# What a crawl of the root to depth 2 finds (the server's titles).
ARTICLES = {"クトゥルフ", "ルルイエ", "ネクロノミコン", "ダゴン (クトゥルフ神話)", "ハスター", "インスマスを覆う影"}

SETTINGS = """
# Added by tests/real_mediawiki.py: the port is chosen when the server starts.
$wgServer = "http://127.0.0.1:" . getenv( "MEDIAWIKI_TEST_PORT" );
$wgJobRunRate = 0;  # jobs run once, by runJobs.php after the import, not during the tests' requests
$wgShowExceptionDetails = true;
$wgEnableUploads = false;
# A throwaway wiki: SQLite need not wait for the disk (fsync) on every write, which makes the import 2x faster.
$wgDBservers = [ [ 'type' => 'sqlite', 'host' => '', 'user' => '', 'password' => '', 'dbname' => $wgDBname,
	'load' => 1, 'flags' => DBO_DEFAULT, 'variables' => [ 'synchronous' => 'OFF' ] ] ];
$wgObjectCaches[CACHE_DB]['server']['variables']['synchronous'] = 'OFF';
$wgLocalisationCacheConf['storeServer']['variables']['synchronous'] = 'OFF';
$wgJobTypeConf['default']['server']['variables']['synchronous'] = 'OFF';
"""


@functools.cache
def missing() -> str | None:
    """Why a real MediaWiki cannot run here, or None."""
    if not shutil.which("php"):
        return "php is not installed (apt-get install mediawiki php-cli php-sqlite3)"
    if not (MEDIAWIKI / "maintenance" / "install.php").is_file():
        return f"Debian's MediaWiki is not installed in {MEDIAWIKI} (apt-get install mediawiki php-cli php-sqlite3)"
    absent = [name for name in EXTENSIONS if not (MEDIAWIKI / "extensions" / name / "extension.json").is_file()]
    if absent:
        return f"MediaWiki extensions missing from {MEDIAWIKI / 'extensions'}: {', '.join(absent)}"
    modules = subprocess.run(["php", "-m"], capture_output=True, text=True).stdout.split()
    if "pdo_sqlite" not in modules:
        return "PHP has no SQLite module (apt-get install php-sqlite3)"
    return None


@dataclass
class RealWiki:
    folder: Path
    port: int
    process: subprocess.Popen

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api.php"

    def log(self) -> str:
        """What the web server wrote: one line per request (`[200]: GET /api.php?...`)."""
        return (self.folder / "php-server.log").read_text(encoding="utf-8", errors="replace")

    def requests(self) -> list[str]:
        """The paths and queries asked of api.php so far, in order."""
        return [line.split(": GET ", 1)[1] for line in self.log().splitlines() if ": GET /api.php" in line]


def _php(folder: Path, *args: str, input: str | None = None, timeout: float = 120) -> str:
    """Runs a MediaWiki maintenance script with this wiki's settings; its output, or an error that shows it."""
    env = {**os.environ, "MW_CONFIG_FILE": str(folder / "LocalSettings.php"), "MEDIAWIKI_TEST_PORT": "0"}
    result = subprocess.run(["php", *args], cwd=MEDIAWIKI, env=env, input=input, capture_output=True, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"php {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result.stdout


def install(folder: Path, pages: dict[str, str] = PAGES) -> None:
    """A new wiki in `folder`: database, settings, the pages imported and the job queue run."""
    folder.mkdir(parents=True, exist_ok=True)
    _php(folder, "maintenance/install.php", "--dbtype", "sqlite", "--dbpath", str(folder / "db"), "--dbname", "wiki",
         "--lang", "ja", "--pass", "throwaway-test-wiki-0", "--server", "http://127.0.0.1", "--scriptpath", "",
         "--confpath", str(folder), "--extensions", ",".join(EXTENSIONS), "--skins", "Vector",
         "CthulhuTestWiki", "Admin")
    with open(folder / "LocalSettings.php", "a", encoding="utf-8") as settings:
        settings.write(SETTINGS)
    # [[en:X]] is an interlanguage link only where `en` is an interwiki prefix; a fresh wiki has none.
    _php(folder, "maintenance/sql.php", "--query", "INSERT INTO interwiki (iw_prefix, iw_url, iw_api, iw_wikiid, "
         "iw_local, iw_trans) VALUES ('en', 'https://en.wikipedia.org/wiki/$1', '', '', 0, 0)")
    texts = folder / "pages"
    texts.mkdir()
    for title, text in pages.items():  # importTextFiles.php takes the title from the file name
        (texts / f"{title}.txt").write_text(text, encoding="utf-8")
    _php(folder, "maintenance/importTextFiles.php", "--user", "Admin", "--summary", "test pages",
         *sorted(str(path) for path in texts.iterdir()))
    _php(folder, "maintenance/runJobs.php")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _end_with_parent() -> None:
    """In the server's process before php starts: on Linux, SIGTERM when the test process dies (even killed),
    so a test run that never reaches its teardown leaves no server behind."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _api(url: str, timeout: float = 5) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def start(folder: Path, timeout: float = 30) -> RealWiki:
    """`php -S` on a free port of 127.0.0.1, serving the installed wiki in `folder`; returns once api.php answers."""
    for _ in range(3):  # another process may take the port between the probe and php's bind
        port = _free_port()
        env = {**os.environ, "MW_CONFIG_FILE": str(folder / "LocalSettings.php"), "MEDIAWIKI_TEST_PORT": str(port)}
        with open(folder / "php-server.log", "w", encoding="utf-8") as log:
            process = subprocess.Popen(["php", "-S", f"127.0.0.1:{port}", "-t", str(MEDIAWIKI)], cwd=MEDIAWIKI,
                                       env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True, preexec_fn=_end_with_parent)
        wiki = RealWiki(folder, port, process)
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if "general" in _api(f"{wiki.api_url}?action=query&meta=siteinfo&format=json&formatversion=2")["query"]:
                    return wiki
            except (OSError, ValueError, KeyError):
                time.sleep(0.1)
        stop(wiki)
        if "Address already in use" not in wiki.log():
            break
    raise RuntimeError(f"php -S did not serve {folder} within {timeout:.0f} s:\n{wiki.log()[-3000:]}")


def stop(wiki: RealWiki) -> None:
    """Ends the web server (SIGTERM, then SIGKILL after 5 s), and whatever it started."""
    if wiki.process.poll() is None:
        os.killpg(wiki.process.pid, signal.SIGTERM)
        try:
            wiki.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(wiki.process.pid, signal.SIGKILL)
            wiki.process.wait()


@contextmanager
def running_wiki(folder: Path) -> Iterator[RealWiki]:
    """A wiki installed in `folder` and served until the block ends."""
    install(folder)
    wiki = start(folder)
    try:
        yield wiki
    finally:
        stop(wiki)
