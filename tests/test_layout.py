"""The package's layout: every documented path imports, no import cycle, modules and classes
of a readable size (``docs/guide/architecture.rst`` describes the layout)."""

import ast
import importlib
import io
import json
import pathlib
import tokenize

import pytest

import skpadim

PACKAGE = pathlib.Path(skpadim.__file__).parent
OLD_NAMES = json.loads((pathlib.Path(__file__).parent / "data" / "public_names_0.1.0.json")
                       .read_text(encoding="utf-8"))
SUBPACKAGES = ("skpadim.features", "skpadim.features.backbones", "skpadim.detectors",
               "skpadim.detectors.scoring", "skpadim.evaluation", "skpadim.io")

#: Modules allowed past MAX_MODULE_LINES: each says why in its docstring, with this phrase.
WHOLE = "reads better whole"
MAX_MODULE_LINES = 500
MAX_CLASS_CODE_LINES = 300
#: The 0.1.0 modules that are aliases now (the rest kept their path: features, pipeline...).
_OLD_ALIASES = {"preprocessing", "backbones", "selection", "decomposition", "gaussian",
                "shrinkage", "spade", "vae", "scoring", "metrics", "thresholds",
                "model_selection", "report", "persistence", "export", "outputs"}


def _modules():
    """``{dotted name: path}`` of every module file of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


@pytest.mark.parametrize("module_name", sorted(OLD_NAMES))
def test_every_name_documented_in_0_1_0_imports_from_its_old_path(module_name):
    module = importlib.import_module(module_name)
    for name in OLD_NAMES[module_name]:
        obj = getattr(module, name)
        # The same class as skpadim's own, whichever path a script used.
        if isinstance(obj, type) and name in skpadim.__all__:
            assert obj is getattr(skpadim, name)
    exec(f"from {module_name} import *", {})  # __all__ lists only names that exist
    if module_name.removeprefix("skpadim.") in _OLD_ALIASES:
        # A star import of an old path gives what it gave in 0.1.0, no more, no less.
        assert sorted(module.__all__) == OLD_NAMES[module_name]
    else:
        assert set(module.__all__) >= set(OLD_NAMES[module_name])


def test_old_paths_lead_to_the_new_homes():
    from skpadim import detectors, evaluation, features, io
    from skpadim.gaussian import PatchMoments, mahalanobis
    from skpadim.metrics import pro_score
    from skpadim.outputs import ResultsWriter
    from skpadim.preprocessing import restore_geometry

    assert PatchMoments is detectors.PatchMoments and mahalanobis is detectors.mahalanobis
    assert pro_score is evaluation.pro_score and ResultsWriter is io.ResultsWriter
    assert restore_geometry is features.restore_geometry


def test_setting_a_name_on_an_old_path_is_refused_with_where_to_set_it():
    import skpadim.spade

    with pytest.raises(AttributeError, match="set it on skpadim.detectors._spade"):
        skpadim.spade.PIXEL_CALIBRATION_IMAGES = 3


@pytest.mark.parametrize("module_name", SUBPACKAGES + ("skpadim",))
def test_every_public_name_of_the_new_layout_imports(module_name):
    module = importlib.import_module(module_name)
    assert module.__all__, module_name
    for name in module.__all__:
        assert getattr(module, name) is not None
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        getattr(module, "no_such_name")


def test_no_documented_name_was_lost_in_the_move():
    new = {name for m in SUBPACKAGES + ("skpadim", "skpadim.pipeline", "skpadim.datasets",
                                        "skpadim.inspection", "skpadim.exceptions",
                                        "skpadim.cli", "skpadim.dask", "skpadim.demo")
           for name in importlib.import_module(m).__all__}
    old = {name for names in OLD_NAMES.values() for name in names}
    assert old <= new


# ---------------------------------------------------------------------------- imports
def _resolve(module_name, is_package, level, target):
    if not level:
        return target
    base = module_name.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _is_type_checking(node):
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_time_edges(module_name, path):
    """Modules of the package that importing ``module_name`` imports (statements at module
    level; imports inside functions run later, and TYPE_CHECKING blocks never)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    edges = set()

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if _is_type_checking(node):
                continue
            if isinstance(node, ast.ImportFrom):
                base = _resolve(module_name, is_package, node.level, node.module)
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    edges.add(child if child in MODULES else base)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(node, field, None)
                if isinstance(inner, list) and not isinstance(node, ast.ClassDef):
                    visit(inner)

    visit(tree.body)
    return {edge for edge in edges if edge in MODULES and edge != module_name}


def _find_cycle(graph):
    """One cycle of ``{node: {successors}}`` as a list of nodes, or None."""
    state, stack = {}, []

    def walk(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = walk(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = walk(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    graph = {name: _import_time_edges(name, path) for name, path in MODULES.items()}
    assert graph["skpadim.pipeline"], "the import graph is empty: the parser missed imports"
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_check_finds_a_cycle():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


# ---------------------------------------------------------------------------- sizes
def _code_lines(source, node):
    """Lines of ``node`` that hold code: no blank, comment-only or docstring line."""
    docstrings = set()
    for inner in ast.walk(node):
        if isinstance(inner, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef, ast.Module)):
            body = inner.body
            if body and isinstance(body[0], ast.Expr) and isinstance(
                    getattr(body[0], "value", None), ast.Constant) and isinstance(
                    body[0].value.value, str):
                docstrings.update(range(body[0].lineno, body[0].end_lineno + 1))
    code = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                          tokenize.DEDENT, tokenize.ENDMARKER):
            continue
        code.update(range(token.start[0], token.end[0] + 1))
    lines = set(range(node.lineno, node.end_lineno + 1)) if hasattr(node, "lineno") else code
    return len((code & lines) - docstrings)


def test_code_line_count_skips_docstrings_and_comments():
    source = 'class A:\n    """Doc\n    more."""\n\n    # why\n    x = 1\n\n    def f(self):\n        """D."""\n        return 2\n'
    (node,) = ast.parse(source).body
    assert _code_lines(source, node) == 4  # class line, x = 1, def line, return


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_modules_hold_one_idea_of_readable_size(module_name):
    path = MODULES[module_name]
    source = path.read_text(encoding="utf-8")
    n_lines = source.count("\n")
    doc = ast.get_docstring(ast.parse(source)) or ""
    assert n_lines <= MAX_MODULE_LINES or WHOLE in " ".join(doc.split()), (
        f"{module_name} has {n_lines} lines: split it, or say in its docstring why it "
        f"{WHOLE}")


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_classes_stay_under_the_size_of_one_idea(module_name):
    source = MODULES[module_name].read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            n = _code_lines(source, node)
            assert n <= MAX_CLASS_CODE_LINES, (
                f"{module_name}.{node.name} has {n} lines of code: move its maths into "
                "functions beside it")
