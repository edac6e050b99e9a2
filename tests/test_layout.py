"""House order: relprop's modules import one another without cycles.

The import graph is read from the source (the AST of every module under ``python/relprop``), so it
sees module-level and function-level imports, relative and absolute.  An edge goes from a module to
every relprop module an import statement names: ``from . import layers`` names
``relprop.layers``, ``from .methods import explain`` names ``relprop.methods``, ``from . import
explain`` names the package ``relprop`` (its ``__init__``), ``import relprop`` too; ``from .
import _core`` names a compiled module (a name the package's ``__init__`` does not bind), which
imports nothing of relprop's, so it is no edge.  The parent
packages Python imports on the way (``relprop/__init__`` before any ``relprop.x``) are not
edges: every package would otherwise form a cycle with each of its submodules.
"""
import ast
import pathlib
import textwrap

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "python" / "relprop"


def module_files(root):
    """``{module name: path}`` of every ``.py`` file under the package folder ``root``."""
    root = pathlib.Path(root)
    base = root.name
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join([base] + parts)] = path
    return out


def _resolve(module, is_package, level, name):
    """The absolute module name of ``from <level dots><name> import ...`` inside ``module``."""
    if level == 0:
        return name
    parts = module.split(".")
    if not is_package:
        parts = parts[:-1]  # a module's relative imports start from its package
    if level > 1:
        parts = parts[:len(parts) - (level - 1)]
    return ".".join(parts + ([name] if name else []))


def _known(name, modules):
    """``name`` or its longest prefix that is one of ``modules`` (None if none is)."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in modules:
            return candidate
    return None


def _bound_names(tree):
    """Names a module binds at its top level (also inside top-level if/try/with blocks, not
    inside functions or classes)."""
    names, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
        for field in ("body", "orelse", "finalbody", "handlers"):
            todo.extend(getattr(node, field, []))
    return names


def import_graph(root):
    """``{module: set of modules it imports}`` for the package folder ``root``."""
    files = module_files(root)
    trees = {m: ast.parse(path.read_text(), str(path)) for m, path in files.items()}
    graph = {m: set() for m in files}
    for module, path in files.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(trees[module]):
            targets = []
            if isinstance(node, ast.Import):
                targets = [_known(alias.name, files) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    if sub in files:
                        targets.append(sub)
                    elif source in files and files[source].name == "__init__.py" and \
                            alias.name not in _bound_names(trees[source]):
                        continue  # a compiled submodule (relprop._core)
                    else:
                        targets.append(_known(source, files))
            graph[module].update(t for t in targets if t is not None and t != module)
    return graph


def find_cycle(graph):
    """One import cycle as a list ``[a, b, ..., a]``, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_relprop_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert "relprop.cli" in graph and "relprop.models.train_digits" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_graph_sees_function_level_relative_and_absolute_imports(tmp_path):
    """The checker itself: it finds a cycle closed by a function-level import, resolves ``..``,
    ``from . import submodule`` and ``import pkg``, and finds none once the cycle is cut."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from . import a
        from ._ext import VERSION
        def version():
            from . import _ext  # binds _ext in the function only
            return _ext.VERSION
    """))
    (pkg / "a.py").write_text("from .sub import VALUE\n")
    (pkg / "sub" / "__init__.py").write_text("VALUE = 1\n")
    (pkg / "sub" / "b.py").write_text(textwrap.dedent("""
        import numpy
        def f():
            from .. import c
    """))
    (pkg / "c.py").write_text(textwrap.dedent("""
        from . import _ext  # compiled: no edge
        def g():
            import pkg
            return pkg
    """))
    graph = import_graph(pkg)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.sub"}, "pkg.sub": set(),
                     "pkg.sub.b": {"pkg.c"}, "pkg.c": {"pkg"}}
    # pkg.a names the package pkg.sub (a name in its __init__), not pkg.sub.b: no cycle yet
    assert find_cycle(graph) is None
    (pkg / "a.py").write_text("from .sub import b\n")
    assert find_cycle(import_graph(pkg)) == ["pkg", "pkg.a", "pkg.sub.b", "pkg.c", "pkg"]
