"""Check that built HTML pages load no script from the network and render math locally.

Run after the Sphinx build (``.ci/run`` does)::

    python docs/_check_offline.py docs/_build/html

It fails if any ``<script src=...>`` or stylesheet ``<link>`` of any page points to another
host (``http:``, ``https:``, ``//``), if a page with formulas loads no MathJax or loads one
that is not in the build, or if no page has formulas at all (then the check proves nothing).
"""

import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

_EXTERNAL = ("http:", "https:", "//")


class _Page(HTMLParser):
    """The script and stylesheet addresses of a page, and whether it has formulas."""

    def __init__(self):
        super().__init__()
        self.sources, self.has_math = [], False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and attrs.get("src"):
            self.sources.append(attrs["src"])
        elif tag == "link" and "stylesheet" in (attrs.get("rel") or "").split():
            self.sources.append(attrs.get("href") or "")
        # Sphinx's math nodes: <span class="math notranslate nohighlight"> and <div ...>.
        if "math" in (attrs.get("class") or "").split():
            self.has_math = True


def problems(html_dir):
    """Every offending address, page by page, as readable lines; empty if all is well."""
    html_dir = Path(html_dir)
    found, math_pages = [], 0
    for page in sorted(html_dir.rglob("*.html")):
        parser = _Page()
        parser.feed(page.read_text(encoding="utf-8", errors="replace"))
        name = page.relative_to(html_dir)
        external = [s for s in parser.sources if s.strip().lower().startswith(_EXTERNAL)]
        found += [f"{name}: loads {source} from the network" for source in external]
        if not parser.has_math:
            continue
        math_pages += 1
        mathjax = [s for s in parser.sources if "mathjax" in s.lower() and s not in external]
        local = [s for s in mathjax if (page.parent / urlsplit(s).path).is_file()]
        if not local:
            found.append(f"{name}: has formulas but loads no MathJax file that is in the build "
                         f"(MathJax addresses: {mathjax or 'none'})")
    if math_pages == 0:
        found.append(f"no page under {html_dir} has formulas, so MathJax was not checked")
    return found


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        sys.exit("usage: python docs/_check_offline.py BUILT_HTML_FOLDER")
    found = problems(argv[0])
    for line in found:
        print(line, file=sys.stderr)
    if found:
        sys.exit(f"{len(found)} problem(s): the documentation needs the network to display")
    print(f"{argv[0]}: no page loads scripts or styles from the network; formulas use the "
          "bundled MathJax")


if __name__ == "__main__":
    main()
