#!/usr/bin/env python3
"""Checks the module graph of src/: no import circles, and the layer rules of DESIGN.md.

Each file is a node (src/cache/fill/reader.rs is cache::fill::reader). A file depends on the
module files its non-test code names: `use crate::...`, `use super::...`, `crate::x::y` paths
in code, and `pub use` re-exports. A name resolves to the longest module path it starts with.
Test code (`#[cfg(test)] mod tests { ... }` at the end of a file, and `tests.rs` files) is left
out: tests may reach across layers.

Fails (exit 1) on any strongly connected set of two or more files, on any edge that breaks a
layer rule, and on a `FileRange` opened up anywhere but `server::sendfile`. Prints the graph's size either way. Standard library only.
"""
import re
import sys
from pathlib import Path

# Which top-level modules may not be named by which: server reaches the cache and the upstream
# only through the mirror; the lower layers never name the ones above them.
FORBIDDEN = {
    "server": {"cache", "upstream", "warm"},
    "mirror": {"server", "warm"},
    "cache": {"server", "mirror", "upstream", "warm"},
    "upstream": {"server", "mirror", "cache", "warm"},
    "cluster": {"server", "mirror", "cache", "upstream", "warm"},
    "oci": {"server", "mirror", "cache", "upstream", "warm", "config", "metrics", "error"},
    "body": {"server", "mirror", "cache", "upstream", "warm", "error"},
    "config": {"server", "mirror", "cache", "upstream", "warm", "error"},
    "metrics": {"server", "mirror", "cache", "upstream", "warm", "error"},
    "error": {"server", "mirror", "warm"},
    "warm": {"server", "mirror", "cache"},
    "keep_warm": {"server", "cache", "upstream"},
}


def module_of(path: Path, src: Path) -> tuple:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def strip(text: str) -> str:
    """Non-test code without comments or string literals."""
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod tests\s*\{", text, re.M)
    if cut:
        text = text[: cut.start()]
    text = re.sub(r"'(?:\\.|[^'\\])'", "' '", text)
    text = re.sub(r'(?<!\w)r(#*)"(?:.|\n)*?"\1', '""', text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    text = re.sub(r"//[^\n]*", "", text)
    return text


def expand(tree: str) -> list:
    """`a::{b, c::{d, e}}` → ['a::b', 'a::c::d', 'a::c::e']."""
    tree = re.sub(r"\s+", "", tree)
    depth, start = 0, None
    for i, ch in enumerate(tree):
        if ch == "{":
            if depth == 0:
                start = i
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                prefix, inner, rest = tree[:start], tree[start + 1 : i], tree[i + 1 :]
                items, depth2, last = [], 0, 0
                for j, c in enumerate(inner):
                    if c == "{":
                        depth2 += 1
                    elif c == "}":
                        depth2 -= 1
                    elif c == "," and depth2 == 0:
                        items.append(inner[last:j])
                        last = j + 1
                items.append(inner[last:])
                return [p for item in items if item for p in expand(prefix + item + rest)]
    return [tree]


def names(code: str, here: tuple, is_dir_module: bool) -> set:
    """Absolute module paths (tuples) that `code` names."""
    found = set()
    base_for_super = here if is_dir_module else here[:-1]
    children = re.findall(
        r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_][a-z0-9_]*)\s*;", code, re.M
    )
    child_base = list(here)
    for tree in re.findall(r"\buse\s+([^;]+);", code):
        for path in expand(tree):
            path = path.split(" as ")[0].split("as")[0] if " as " in path else path
            segs = [s for s in path.split("::") if s]
            if not segs:
                continue
            if segs[0] == "crate":
                found.add(tuple(segs[1:]))
            elif segs[0] in ("super", "self"):
                base = list(base_for_super if segs[0] == "super" else here)
                i = 0
                while i < len(segs) and segs[i] in ("super", "self"):
                    if segs[i] == "super" and i > 0:
                        base.pop()
                    i += 1
                found.add(tuple(base + segs[i:]))
            elif segs[0] in children:
                # A child module declared here (`use fill::Fills;` in cache/mod.rs); any other
                # first segment is an outside crate.
                found.add(tuple(child_base + segs))
    for path in re.findall(r"\bcrate((?:::[a-z_][a-z0-9_]*)+)", code):
        found.add(tuple(s for s in path.split("::") if s))
    # Paths through a child module declared here (`handlers::handle(...)` in server/mod.rs).
    for child in children:
        for rest in re.findall(r"(?<![:\w])" + child + r"((?:::[a-z_][a-z0-9_]*)*)::", code):
            found.add(tuple(child_base + [child] + [s for s in rest.split("::") if s]))
    return found


def main() -> int:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    files = {}
    for path in sorted(src.rglob("*.rs")):
        if path.name == "tests.rs" or path.name == "main.rs" and path.parent == src:
            continue
        files[module_of(path, src)] = path
    modules = set(files)

    def resolve(name: tuple):
        for n in range(len(name), 0, -1):
            if name[:n] in modules:
                return name[:n]
        return None

    edges = {m: set() for m in modules}
    for module, path in files.items():
        code = strip(path.read_text())
        is_dir = path.name in ("mod.rs", "lib.rs")
        for name in names(code, module, is_dir):
            target = resolve(name)
            if target is not None and target != module and target != ():
                edges[module].add(target)

    problems = []
    # A cached file's range is opened up in one place only: the socket that sends it.
    for module, path in files.items():
        if module not in (("body",), ("server", "sendfile")) and re.search(
            r"\.open_up\(", strip(path.read_text())
        ):
            problems.append(f"body: {'::'.join(module)} opens up a FileRange")
    for module, targets in edges.items():
        if not module:
            continue
        banned = FORBIDDEN.get(module[0], set())
        for target in targets:
            if target[0] in banned:
                problems.append(
                    f"layer: {'::'.join(module)} names {'::'.join(target)}"
                )

    # Tarjan's strongly connected components.
    index, low, on_stack, stack, sccs = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            sccs.append(scc)

    sys.setrecursionlimit(10000)
    for v in sorted(modules):
        if v not in index:
            visit(v)
    for scc in sccs:
        if len(scc) > 1:
            names_ = sorted("::".join(m) or "crate" for m in scc)
            problems.append("circle: " + " <-> ".join(names_))

    edge_count = sum(len(t) for t in edges.values())
    print(f"layers: {len(modules)} modules, {edge_count} dependencies between them")
    for p in sorted(problems):
        print(p)
    if problems:
        print(f"layers: {len(problems)} problem(s)")
        return 1
    print("layers: no import circles, every layer rule holds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
