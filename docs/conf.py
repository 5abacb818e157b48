"""Sphinx configuration of the skpadim documentation.

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``. The build
needs no network: cross-references to other projects come from inventories kept in
``docs/_intersphinx/`` (see the README there), and the examples use data and weights that
install with the ``docs`` extra. Nor does reading it: MathJax is served from the build
(``sphinx-mathjax-offline``), so formulas render offline.
"""

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _apigen  # noqa: E402
from sphinx.errors import PycodeError  # noqa: E402
from sphinx.pycode import ModuleAnalyzer  # noqa: E402

import skpadim  # noqa: E402

# The API pages are generated from the package's __all__ lists, so new names appear
# without editing the docs (see _apigen.py).
_apigen.write_api_pages(HERE / "api")

# -- Project ----------------------------------------------------------------------------
project = "skpadim"
author = "the skpadim developers"
copyright = "the skpadim developers"
release = skpadim.__version__
version = ".".join(release.split(".")[:2])

# -- General ----------------------------------------------------------------------------
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    # Bundles MathJax 3 and copies it into _static/mathjax/ at the end of the build, so
    # formulas render without the CDN that sphinx.ext.mathjax loads by default.
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]
# The bundled copy (the extension sets this too; said here so that it cannot silently fall
# back to the CDN). docs/_check_offline.py checks the built pages load it.
mathjax_path = "mathjax/tex-chtml.js"
templates_path = ["_templates"]
# examples/ holds the gallery's sources; sphinx-gallery turns them into auto_examples/.
# sg_execution_times.rst: left by builds that wrote computation times (see below).
exclude_patterns = ["_build", "_intersphinx", "_templates", "examples", "**/README.rst",
                    "sg_execution_times.rst"]
root_doc = "index"
add_module_names = False
pygments_style = "sphinx"

# -- autodoc, autosummary, numpydoc -----------------------------------------------------
autosummary_generate = True
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autoclass_content = "class"
# The class template documents the methods itself; numpydoc's own member tables would
# repeat them.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_attributes_as_param_list = True



def _skip_foreign_members(app, what, name, obj, skip, options):
    """Document a class's own and skpadim-inherited members, not scikit-learn's or torch's.

    Their docstrings are written for their own documentation (glossary terms, labels
    that exist only there) and are one click away through intersphinx.
    """
    if what != "class":
        return None
    module = getattr(obj, "__module__", None) or getattr(
        getattr(obj, "fget", None), "__module__", None
    )
    if module and module.split(".")[0] != "skpadim":
        return True
    return None


# A field line of a numpydoc section: "name : type" or "name1, name2 : type".
_FIELD = re.compile(r"^(\s*[\w*][\w, *]* : )(.*)$")
# A name ending in an underscore (a fitted attribute such as n_features_in_) inside a
# shape, followed by "," or ")": reST would read it as a hyperlink reference.
_TRAILING_UNDERSCORE = re.compile(r"(?<![\w`])([A-Za-z]\w*_)(?=[,)\]])")


def _quote_attribute_names_in_types(app, what, name, obj, options, lines):
    """Render ``n_features_in_`` in a type such as ``ndarray of shape (n, n_features_in_)``
    as a literal rather than as a hyperlink reference to a target that does not exist.

    Docstrings name fitted attributes in shapes, as scikit-learn's do; only the type part
    of field lines is touched, and only outside existing ``literals``.
    """
    for i, line in enumerate(lines):
        match = _FIELD.match(line)
        if match is None or line.lstrip().startswith((">>>", "...")):
            continue
        head, type_text = match.groups()
        parts = type_text.split("``")
        # Even-numbered parts are outside double-backtick literals.
        parts[::2] = [_TRAILING_UNDERSCORE.sub(r"``\1``", part) for part in parts[::2]]
        lines[i] = head + "``".join(parts)


def _data_docs(app, what, name, obj, options, lines):
    """Give a re-exported constant the ``#:`` comment of the module that defines it, and
    never the docstring of its type (``tuple``'s "Built-in immutable sequence...", or an
    array's, which numpy even words differently from its class's)."""
    if what != "data":
        return
    short_name = name.rsplit(".", 1)[-1]
    for module_name, module in sorted(sys.modules.items()):
        if module_name.split(".")[0] != "skpadim" or getattr(module, short_name, None) is not obj:
            continue
        try:
            attr_docs = ModuleAnalyzer.for_module(module_name).find_attr_docs()
        except PycodeError:
            continue
        if ("", short_name) in attr_docs:
            lines[:] = [line.rstrip("\n") for line in attr_docs[("", short_name)]]
            return
    text = " ".join(" ".join(lines).split())
    if text == " ".join((type(obj).__doc__ or "").split()):
        lines.clear()


def setup(app):
    app.connect("autodoc-process-docstring", _data_docs, priority=100)
    app.connect("autodoc-skip-member", _skip_foreign_members)
    # Before numpydoc (priority 500) turns the sections into reST.
    app.connect("autodoc-process-docstring", _quote_attribute_names_in_types, priority=100)


# -- intersphinx, offline ---------------------------------------------------------------
# Each project links to its online documentation, but its inventory is read from a file
# shipped in docs/_intersphinx/, never downloaded: the machines that build these docs
# have no network. A project whose file is absent is left out, so its names are rendered
# as plain code instead of links, without a warning.
_INVENTORIES = {
    "python": ("https://docs.python.org/3", "python.inv"),
    "numpy": ("https://numpy.org/doc/stable", "numpy.inv"),
    "scipy": ("https://docs.scipy.org/doc/scipy", "scipy.inv"),
    "sklearn": ("https://scikit-learn.org/stable", "sklearn.inv"),
    "torch": ("https://docs.pytorch.org/docs/stable", "torch.inv"),
    "matplotlib": ("https://matplotlib.org/stable", "matplotlib.inv"),
}
intersphinx_mapping = {
    name: (url, str(HERE / "_intersphinx" / filename))
    for name, (url, filename) in _INVENTORIES.items()
    if (HERE / "_intersphinx" / filename).is_file()
}

# -- sphinx-gallery ---------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "ignore_pattern": r"__init__\.py",
    "within_subsection_order": "FileNameSortKey",
    "doc_module": ("skpadim",),
    "backreferences_dir": "api/generated/backreferences",
    "remove_config_comments": True,
    "min_reported_time": 1,
    "download_all_examples": False,
    # Its timing pages load jQuery and DataTables from CDNs, so they would not display
    # offline (docs/_check_offline.py fails on them); the build log still shows the times.
    "write_computation_times": False,
}

# -- HTML -------------------------------------------------------------------------------
html_theme = "pydata_sphinx_theme"
html_title = f"skpadim {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "secondary_sidebar_items": ["page-toc"],
}
html_show_sourcelink = False
