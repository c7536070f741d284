"""Pictures of the documentation site as a reader sees it: headless Chromium screenshots of the
home page, getting started, the tutorial, the config reference and an API page at 1280 px, and a
check of every page's HTML for Sphinx roles left raw (``:class:`` and the like).

    ./dev python docs/screenshots.py                 # builds the site, then the pictures (about 2 min)
    ./dev python docs/screenshots.py --site site     # an already built site
    ./dev python docs/screenshots.py --out shots     # where the PNGs go (default site-screenshots/)

It needs a Chromium (Debian's ``chromium``; ``--chromium PATH`` for another); without one it still
checks the HTML. ``tests/test_site.py`` runs it on the site it builds.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

ROOT = Path(__file__).resolve().parents[1]
#: the pages pictured, as built (use_directory_urls: false)
PAGES = ("index.html", "getting-started.html", "tutorials/getting_started.html", "config.html", "api/models.html")
#: the width of the window, in CSS pixels; the height holds a first screen and more
WINDOW = (1280, 2400)
#: Sphinx roles that the API reference's docstrings use and the site must render as code
RAW_ROLE = re.compile(r"(?<![\w:]):(class|func|meth|mod|attr|data|obj|exc):(?=[`\s]|$)|(?<![\w:]):(param|rtype)\b")


def chromium(explicit: Optional[str] = None) -> Optional[str]:
    """The path of a Chromium (or Chrome) to run headless, or None."""
    if explicit:
        return explicit
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


def build_site(site: Path) -> None:
    """``mkdocs build --strict`` into ``site`` (the tutorial run with one torch thread)."""
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=ROOT,
                   env=env, check=True)


def raw_roles(site: Path) -> List[str]:
    """``page: role`` for each page whose prose shows a Sphinx role left raw (a role's backticks
    render as code, so ``:class:`` stands before a code span; code blocks, such as an example's
    source shown whole, and code spans that show a role as text may hold them)."""
    found = []
    for page in sorted(site.rglob("*.html")):
        html = re.sub(r"<pre\b.*?</pre>", "", page.read_text(errors="replace"), flags=re.S)
        html = re.sub(r"<code\b[^>]*>[^<]*:(class|func|meth|mod|attr|data|obj|exc|param|rtype)\b[^<]*</code>", "",
                      html)
        text = re.sub(r"<[^>]+>", " ", html)
        match = RAW_ROLE.search(text)
        if match:
            found.append(f"{page.relative_to(site)}: {text[max(0, match.start() - 40):match.end() + 40]!r}")
    return found


def screenshots(site: Path, out: Path, browser: str, pages=PAGES, timeout: float = 120) -> List[Path]:
    """A PNG of each page of ``site`` at :data:`WINDOW`, in ``out``; the paths written. The pages are
    taken at once, one headless browser each (a browser mostly waits: about 3 s a page, one after
    another)."""
    out.mkdir(parents=True, exist_ok=True)
    targets = [out / (page.replace("/", "_").removesuffix(".html") + ".png") for page in pages]
    with tempfile.TemporaryDirectory() as profiles:
        browsers = [subprocess.Popen([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                                      f"--user-data-dir={Path(profiles) / str(i)}",
                                      f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--screenshot={target}",
                                      (site / page).resolve().as_uri()],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                    for i, (page, target) in enumerate(zip(pages, targets))]
        try:
            for process in browsers:
                _, err = process.communicate(timeout=timeout)
                if process.returncode != 0:
                    raise subprocess.CalledProcessError(process.returncode, process.args, stderr=err)
        finally:
            for process in browsers:
                if process.poll() is None:
                    process.kill()
                    process.wait()
    return targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", help="a built site (default: build one in a temporary folder)")
    parser.add_argument("--out", default="site-screenshots", help="where the PNGs go (default site-screenshots/)")
    parser.add_argument("--chromium", help="the browser to run headless (default: chromium on the PATH)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        site = Path(args.site) if args.site else Path(scratch) / "site"
        if not args.site:
            build_site(site)
        problems = raw_roles(site)
        for problem in problems:
            print(f"raw role: {problem}", file=sys.stderr)
        browser = chromium(args.chromium)
        if browser is None:
            print("no Chromium found: the HTML was checked, no pictures taken", file=sys.stderr)
        else:
            for path in screenshots(site, Path(args.out), browser):
                print(f"wrote {path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
