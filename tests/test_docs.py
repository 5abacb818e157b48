"""The API reference lists every public name, and every public class and function carries a
runnable example.

The reference pages are written by ``docs/_apigen.py`` at each Sphinx build; here they are
written into a temporary folder and their ``autosummary`` lists read back, so a name that
the generator skipped fails this test without a Sphinx build.
"""

import importlib
import inspect
import re
import sys
from pathlib import Path

import pytest

import skpadim

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture(scope="module")
def apigen():
    sys.path.insert(0, str(DOCS))
    try:
        yield importlib.import_module("_apigen")
    finally:
        sys.path.remove(str(DOCS))


@pytest.fixture(scope="module")
def listed(apigen, tmp_path_factory):
    """``{qualified name}`` of every entry of every autosummary list of the reference."""
    folder = tmp_path_factory.mktemp("api")
    names = set()
    for page in apigen.write_api_pages(folder):
        text = page.read_text(encoding="utf-8")
        module = re.search(r"^\.\. currentmodule:: (\S+)$", text, re.M)
        for block in re.findall(r"\.\. autosummary::\n(?:   :\S+:.*\n)*\n((?:   \S+\n?)+)", text):
            names.update(f"{module.group(1)}.{entry.strip()}" for entry in block.splitlines())
    return names


def _public_modules(apigen):
    return [importlib.import_module(name) for name in apigen.public_modules()]


def test_every_top_level_name_is_in_the_reference(listed):
    missing = [name for name in skpadim.__all__ if f"skpadim.{name}" not in listed]
    assert not missing, f"not in the API reference: {missing}"


def test_every_public_submodule_name_is_in_the_reference(apigen, listed):
    missing = []
    for module in _public_modules(apigen):
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            # Re-exports of the top level are documented once, as skpadim.<name>.
            at_top = name in skpadim.__all__ and getattr(skpadim, name) is obj
            if f"{module.__name__}.{name}" not in listed and not at_top:
                missing.append(f"{module.__name__}.{name}")
    assert not missing, f"not in the API reference: {missing}"


def test_every_listed_entry_exists(listed):
    for qualified in listed:
        module_name, _, name = qualified.rpartition(".")
        assert hasattr(importlib.import_module(module_name), name), qualified


def test_public_classes_and_functions_have_examples(apigen):
    lacking = []
    for module in _public_modules(apigen):
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                continue  # exceptions are raised by the package, not called by users
            doc = inspect.getdoc(obj) or ""
            section = re.search(r"^Examples\n-{8,}\n", doc, re.M)
            if section is None or ">>> " not in doc[section.end():]:
                lacking.append(f"{module.__name__}.{name}")
    assert not lacking, f"no Examples section with a doctest: {sorted(set(lacking))}"


@pytest.fixture(scope="module")
def check_offline():
    sys.path.insert(0, str(DOCS))
    try:
        yield importlib.import_module("_check_offline")
    finally:
        sys.path.remove(str(DOCS))


def _page(folder, name, head, body=""):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"<html><head>{head}</head><body>{body}</body></html>", encoding="utf-8")


MATH = '<span class="math notranslate nohighlight">\\(x\\)</span>'


def test_offline_check_accepts_pages_with_local_mathjax(check_offline, tmp_path):
    (tmp_path / "_static" / "mathjax").mkdir(parents=True)
    (tmp_path / "_static" / "mathjax" / "tex-chtml.js").write_text("")
    _page(tmp_path, "guide/padim.html",
          '<script src="../_static/mathjax/tex-chtml.js"></script>', MATH)
    _page(tmp_path, "index.html", '<link rel="stylesheet" href="_static/theme.css">')
    assert check_offline.problems(tmp_path) == []


@pytest.mark.parametrize("source", ["https://cdn.jsdelivr.net/npm/mathjax@4/tex-mml-chtml.js",
                                    "//cdn.example.org/x.js", "HTTP://example.org/x.js"])
def test_offline_check_flags_scripts_from_the_network(check_offline, tmp_path, source):
    _page(tmp_path, "index.html", f'<script src="{source}"></script>', MATH)
    found = check_offline.problems(tmp_path)
    assert any(source in line for line in found)
    assert any("loads no MathJax file that is in the build" in line for line in found)


def test_offline_check_flags_a_missing_local_mathjax(check_offline, tmp_path):
    _page(tmp_path, "index.html", '<script src="_static/mathjax/tex-chtml.js"></script>', MATH)
    assert check_offline.problems(tmp_path) == [
        "index.html: has formulas but loads no MathJax file that is in the build "
        "(MathJax addresses: ['_static/mathjax/tex-chtml.js'])"
    ]


def test_offline_check_refuses_a_build_without_formulas(check_offline, tmp_path):
    _page(tmp_path, "index.html", '<script src="_static/doctools.js"></script>')
    assert [line for line in check_offline.problems(tmp_path) if "no page" in line]
