"""The import graph of mmrl, video and dllm (every import, also inside functions): no circle between
modules, and every import goes to the same or a lower layer. An adapter does not import another,
except the video adapter, which extends the vision-language one."""
import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
LAYERS = [  # lowest first
    {"mmrl", "mmrl.registry", "mmrl.modalities", "mmrl.config", "mmrl.data", "mmrl.models"},
    {"mmrl.rewards"},
    {"mmrl.eval"},
    {"mmrl.core"},
    {"mmrl.text", "mmrl.vlm", "video", "dllm", "dllm.image"},
    {"mmrl.launch"},  # builds any family by name (mmrl.modalities), then trains
]
ADAPTER_LAYER = 4
ADAPTER_EXTENDS = {("video", "mmrl.vlm")}


def modules() -> dict[str, Path]:
    found = {}
    for base in ("mmrl", "video", "dllm"):
        for path in (ROOT / base).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def package(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "mmrl":
        return ".".join(parts[:2])
    return "dllm.image" if parts[:2] == ["dllm", "image"] else parts[0]


def imports(path: Path, known: dict) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] + [f"{node.module}.{a.name}" for a in node.names] \
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        out.update(n for n in names if n in known)
    return out


def test_no_module_imports_itself_in_a_circle():
    known = modules()
    graph = {m: imports(p, known) - {m} for m, p in known.items()}
    for package_init in [m for m in known if (ROOT / m.replace(".", "/") / "__init__.py").exists()]:
        graph[package_init] = {t for t in graph[package_init] if not t.startswith(package_init + ".")}
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert circles == []


def test_imports_go_down_the_layers_and_adapters_stay_apart():
    known = modules()
    layer = {p: i for i, members in enumerate(LAYERS) for p in members}
    wrong = []
    for module, path in known.items():
        source = package(module)
        for target in {package(t) for t in imports(path, known)} - {source}:
            if layer[target] > layer[source] or (layer[target] == layer[source] == ADAPTER_LAYER
                                                 and (source, target) not in ADAPTER_EXTENDS
                                                 and target.split(".")[0] != source.split(".")[0]):
                wrong.append(f"{module} -> {target}")
    assert wrong == []
