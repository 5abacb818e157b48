"""Write the API reference pages from the package's ``__all__`` lists.

``conf.py`` calls :func:`write_api_pages` at the start of every build, so a name added to the
``__all__`` of ``skpadim`` or of any public submodule (one whose name does not start with an
underscore) appears in the reference without editing the docs. The pages hold plain
``autosummary`` lists; Sphinx's autosummary then writes one page per object.

Nothing here needs Sphinx: ``tests/test_docs.py`` runs :func:`write_api_pages` into a
temporary folder and reads the lists back.
"""

import importlib
import inspect
import pkgutil
from pathlib import Path

PACKAGE = "skpadim"

# Reading order of the module pages; public modules not named here follow, alphabetically.
MODULE_ORDER = (
    "skpadim",
    "skpadim.datasets",
    "skpadim.features",
    "skpadim.features.backbones",
    "skpadim.detectors",
    "skpadim.detectors.scoring",
    "skpadim.pipeline",
    "skpadim.evaluation",
    "skpadim.inspection",
    "skpadim.io",
    "skpadim.dask",
    "skpadim.demo",
    "skpadim.exceptions",
    "skpadim.cli",
)

# Sections of a module page, in order, and which objects go in each.
KINDS = ("Classes", "Functions", "Constants", "Exceptions and warnings")

HEADER = """\
.. This file is written by docs/_apigen.py at every build; edits here are lost.

"""


def public_modules():
    """Names of ``skpadim`` and its public submodules, in :data:`MODULE_ORDER`.

    A submodule is public when no part of its dotted name starts with an underscore.
    """
    package = importlib.import_module(PACKAGE)
    names = {PACKAGE}
    for info in pkgutil.walk_packages(package.__path__, prefix=PACKAGE + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.add(info.name)
    rank = {name: i for i, name in enumerate(MODULE_ORDER)}
    return sorted(names, key=lambda name: (rank.get(name, len(rank)), name))


def kind_of(obj):
    """The section of a module page that ``obj`` belongs to (one of :data:`KINDS`)."""
    if inspect.isclass(obj):
        return "Exceptions and warnings" if issubclass(obj, BaseException) else "Classes"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return "Functions"
    return "Constants"


def documented_names(module_name):
    """``{kind: [name, ...]}`` of what the page of ``module_name`` lists.

    Every name of the module's ``__all__``, except, on a submodule's page, the objects that
    the top-level package re-exports: those are documented once, under ``skpadim.<name>``,
    which is how users import them.
    """
    module = importlib.import_module(module_name)
    top = importlib.import_module(PACKAGE)
    sections = {kind: [] for kind in KINDS}
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if module_name != PACKAGE and name in top.__all__ and getattr(top, name) is obj:
            continue
        sections[kind_of(obj)].append(name)
    return {kind: names for kind, names in sections.items() if names}


def _underline(text, char):
    return f"{text}\n{char * len(text)}\n"


def module_page(module_name):
    """The reStructuredText of one module page."""
    lines = [HEADER, _underline(module_name, "=")]
    lines.append(f".. automodule:: {module_name}\n")
    top = importlib.import_module(PACKAGE)
    module = importlib.import_module(module_name)
    reexported = [
        name for name in getattr(module, "__all__", [])
        if module_name != PACKAGE and name in top.__all__
        and getattr(top, name) is getattr(module, name)
    ]
    if reexported:
        links = ", ".join(f":obj:`~{PACKAGE}.{name}`" for name in reexported)
        lines.append(f"Also defined here, and documented at the top level: {links}.\n")
    lines.append(f".. currentmodule:: {module_name}\n")
    for kind, names in documented_names(module_name).items():
        lines.append(_underline(kind, "-"))
        lines.append(".. autosummary::\n   :toctree: generated/\n   :nosignatures:\n")
        lines.extend(f"   {name}" for name in names)
        lines.append("")
    return "\n".join(lines)


def index_page(module_names):
    """The reStructuredText of the reference's front page."""
    toctree = "\n".join(f"   {name}" for name in module_names)
    return (
        HEADER
        + _underline("API reference", "=")
        + "\nEvery public name of the package, one page per sub-package, in the order an "
        "image passes through them (:doc:`/guide/architecture` draws that path). The "
        "estimators and functions most scripts need are importable from ``skpadim`` itself; "
        "the sub-packages hold the building blocks: data sets, features, detectors, "
        "evaluation, and files in and out.\n\n"
        ".. toctree::\n   :maxdepth: 2\n\n"
        + toctree
        + "\n"
    )


def write_api_pages(folder):
    """Write ``index.rst`` and one page per public module into ``folder``.

    A file is rewritten only when its text changes, so incremental builds stay incremental.
    Pages of modules that no longer exist are removed.

    Returns
    -------
    paths : list of pathlib.Path
        The pages, index first.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    modules = [name for name in public_modules() if _has_content(name)]
    pages = {"index": index_page(modules)}
    pages.update({name: module_page(name) for name in modules})
    paths = []
    for stem, text in pages.items():
        path = folder / f"{stem}.rst"
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
        paths.append(path)
    for stale in set(folder.glob("*.rst")) - set(paths):
        stale.unlink()
    # autosummary writes one page per object into generated/ but never removes one: a name
    # that moved (to the top level, say) would leave a page that warns on every build.
    current = {f"{name}.{entry}" for name in modules
               for entries in documented_names(name).values() for entry in entries}
    for stale in (folder / "generated").glob("*.rst"):
        if stale.stem not in current:
            stale.unlink()
    return paths


def _has_content(module_name):
    """A module gets a page when it has a docstring or documents a name of its own."""
    module = importlib.import_module(module_name)
    return module_name == PACKAGE or bool(documented_names(module_name)) or bool(
        (module.__doc__ or "").strip()
    )
