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
