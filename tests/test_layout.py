"""The package layout: no import circle among rankt5_jax's modules (imports inside functions
count), each stage imports only the stages below it, and docs/design.md maps the real tree."""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "rankt5_jax")

# Low to high: a module may import its own stage and the stages before it (docs/design.md).
STAGES = [
    ("errors", "quiet", "pretrained"),
    ("evaluation",),
    ("data",),
    ("modeling",),
    ("checkpoints",),
    ("retrieval",),
    ("inference",),
    ("experiments",),
    ("training", "tasks"),
    ("t5x",),
    ("cli", "demo", "pyterrier", "__init__", "__main__"),
]
LEVEL = {name: level for level, names in enumerate(STAGES) for name in names}


def _modules() -> dict[str, str]:
    """Module name -> file, for rankt5_jax and the `tasks` package it ships as rankt5_jax.tasks."""
    found = {"rankt5_jax.tasks": os.path.join(REPO, "tasks", "__init__.py")}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(rel)] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """Every rankt5_jax module `path` imports, at any depth (functions and methods included)."""
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name.startswith("rankt5_jax"):
                out.add(name)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # The variant registry names its model classes by path and imports them on use.
    from rankt5_jax.modeling import registry

    for variant in registry.VARIANTS.values():
        if isinstance(variant.model_class, str):  # (a class: registered by a test)
            graph["rankt5_jax.modeling.registry"].add(variant.model_class.partition(":")[0])
    return graph


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_circle():
    graph = _graph()
    done: set[str] = set()

    def visit(node, path):
        if node in path:
            cycle = path[path.index(node) :] + [node]
            raise AssertionError("import circle: " + " -> ".join(cycle))
        if node in done:
            return
        for target in sorted(graph.get(node, ())):
            visit(target, path + [node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])
    assert len(done) > 40  # the walk saw the whole package


def test_stages_import_only_lower_stages():
    graph = _graph()
    upward = [
        f"{src} -> {dst}"
        for src, targets in graph.items()
        for dst in targets
        if LEVEL[_stage(dst)] > LEVEL[_stage(src)]
    ]
    assert not upward, "imports against the stage order: " + "; ".join(sorted(upward))
    assert {_stage(m) for m in graph} <= set(LEVEL), "a new subpackage needs a stage here"


def test_circle_detector_sees_function_level_imports(tmp_path):
    source = "def f():\n    from rankt5_jax.inference import ranker\n"
    path = tmp_path / "m.py"
    path.write_text(source)
    assert _imports(str(path), _modules()) == {
        "rankt5_jax.inference",
        "rankt5_jax.inference.ranker",
    }


def test_design_module_map_matches_the_tree():
    design = open(os.path.join(REPO, "docs", "design.md")).read()
    table = design[design.index("## Module map") : design.index("## Decisions")]
    for name, path in _modules().items():
        rel = os.path.relpath(path, REPO)
        if os.path.basename(rel) in ("__init__.py", "__main__.py") and name != "rankt5_jax.tasks":
            continue
        shown = rel if name != "rankt5_jax.tasks" else "tasks/"
        assert f"`{shown}`" in table, f"docs/design.md's module map does not list {shown}"
    for cell in table.split("`"):
        if cell.startswith(("rankt5_jax/", "tasks/")) and cell.endswith((".py", "/")):
            assert os.path.exists(os.path.join(REPO, cell)), f"design.md lists missing {cell}"


# Each model family's room: its modules import no other family's (issue 22). The shared core
# (config, layers, network, base, heads) serves them all; `models` gathers every family's names.
FAMILIES = {
    "rankt5": ("rankt5_jax.modeling.rankt5",),
    "monot5": ("rankt5_jax.modeling.monot5",),
    "fit5": ("rankt5_jax.modeling.fit5",),
    "ur2n": ("rankt5_jax.modeling.ur2n", "rankt5_jax.modeling.xtr"),
}
CORE = ("config", "layers", "network", "heads")


def test_family_modules_are_rooms():
    graph = _graph()
    family_of = {module: family for family, modules in FAMILIES.items() for module in modules}
    assert set(family_of) <= set(graph), "a family module moved: update FAMILIES"
    crossing = [
        f"{src} -> {dst}"
        for src, family in family_of.items()
        for dst in graph[src]
        if family_of.get(dst, family) != family
    ]
    assert not crossing, "a family imports another family: " + "; ".join(sorted(crossing))
    for name in CORE:  # the blocks and stacks know no family (families subclass `Encoder`)
        module = f"rankt5_jax.modeling.{name}"
        assert not graph[module] & set(family_of), f"{module} imports a family module"
    # Every registered variant's class lives in a family room.
    from rankt5_jax.modeling import registry

    for variant in registry.VARIANTS.values():
        if isinstance(variant.model_class, str):
            assert variant.model_class.partition(":")[0] in family_of, variant.name


def test_families_declare_their_options_once():
    # No family module hand-writes spec() / from_spec() / __init__: they come from its config.
    for family, modules in FAMILIES.items():
        if family == "ur2n":  # XTRModel wraps a base model; it has no options of its own
            continue
        for module in modules:
            path = _modules()[module]
            names = {
                node.name
                for node in ast.walk(ast.parse(open(path).read(), path))
                if isinstance(node, ast.FunctionDef)
            }
            assert not names & {"spec", "from_spec", "__init__"}, module


# Modules above 600 lines mix concerns (issue 22): none is allowed.
MAX_LINES = 600


def test_no_module_over_600_lines():
    long = []
    for path in _modules().values():
        rel = os.path.relpath(path, REPO)
        with open(path) as handle:
            lines = sum(1 for _ in handle)
        if lines > MAX_LINES:
            long.append(f"{rel} ({lines} lines)")
    assert not long, "modules over 600 lines: " + ", ".join(sorted(long))
