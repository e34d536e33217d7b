"""The crate and module graph of the workspace, read from the code.

    python3 tools/module_graph.py [ROOT] [--check]

Crates and their `dfc-*` dependencies come from the members' Cargo.toml files; modules are the
`.rs` files of each crate, and module A depends on module B when A names B through a path
(`crate::b::…`, `super::b`, `self::b`, or a `use` of them). Prints the crate graph, each
crate's module count and largest files, and every import cycle between modules (strongly
connected components of more than one file). With --check, exits 1 when there is a cycle.
"""

import re
import sys
from pathlib import Path


def members(root):
    text = (root / "Cargo.toml").read_text()
    line = next(l for l in text.splitlines() if l.startswith("members = ["))
    return re.findall(r'"([^"]+)"', line)


def crate_info(root, member):
    toml = (root / member / "Cargo.toml").read_text()
    name = re.search(r'^name = "([^"]+)"', toml, re.M).group(1)
    lib = re.search(r'\[lib\][^\[]*?path = "([^"]+)"', toml, re.S)
    deps = []
    section = re.search(r"^\[dependencies\]\n(.*?)(^\[|\Z)", toml, re.M | re.S)
    if section:
        deps = re.findall(r"^(dfc-[a-z-]+)", section.group(1), re.M)
    lib_path = (root / member / lib.group(1)) if lib else None
    return name, lib_path, deps


def module_files(lib):
    """Maps module paths (tuples) to files, following `mod x;` from the crate root."""
    out = {}

    def visit(path, file):
        out[path] = file
        text = file.read_text()
        base = file.parent if file.name in ("lib.rs", "mod.rs", "main.rs") else file.parent / file.stem
        for m in re.finditer(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+([a-z_0-9]+)\s*;", text, re.M):
            name = m.group(1)
            for cand in (base / f"{name}.rs", base / name / "mod.rs"):
                if cand.is_file():
                    visit(path + (name,), cand)
                    break

    visit((), lib)
    return out


def edges(mods):
    """Module-to-module references through crate/super/self paths."""
    result = {p: set() for p in mods}
    for path, file in mods.items():
        text = re.sub(r"//[^\n]*", "", file.read_text())
        # Test modules reach back into their parents; they are not the module's imports.
        text = text.split("#[cfg(test)]")[0]
        here = path if file.name in ("lib.rs", "mod.rs") else path[:-1]
        refs = []
        for m in re.finditer(r"\b(crate|super|self)((?:::[A-Za-z_0-9]+)+)", text):
            head, rest = m.group(1), m.group(2).split("::")[1:]
            if head == "crate":
                start = ()
            elif head == "self":
                start = path
            else:
                start = path[:-1] if path else ()
            refs.append(start + tuple(rest))
        # `use crate::{a, b::c}` groups.
        for m in re.finditer(r"\b(crate|super)::\{([^;]*?)\};", text, re.S):
            head = () if m.group(1) == "crate" else (path[:-1] if path else ())
            for item in re.split(r"[,\s]+", m.group(2)):
                item = item.strip("{} ")
                if item:
                    refs.append(head + tuple(item.split("::")))
        for ref in refs:
            target = None
            for k in range(len(ref), 0, -1):
                if ref[:k] in mods:
                    target = ref[:k]
                    break
            if target is not None and target != path and target != () and not path[: len(target)] == target:
                result[path].add(target)
        _ = here
    return result


def cycles(graph):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in graph:
        if v not in index:
            strong(v)
    return out


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    root = Path(args[0] if args else Path(__file__).resolve().parent.parent)
    found = 0
    print("crates (→ the dfc crates each depends on):")
    infos = [(m, *crate_info(root, m)) for m in members(root)]
    for member, name, lib, deps in infos:
        print(f"  {name:12} {member + '/':14} → {', '.join(deps) or '—'}")
    print("modules:")
    for member, name, lib, deps in infos:
        if lib is None or not lib.is_file():
            continue
        mods = module_files(lib)
        graph = edges(mods)
        lines = sorted(((sum(1 for _ in f.open()), f) for f in mods.values()), reverse=True)
        big = ", ".join(f"{f.relative_to(root)} {n}" for n, f in lines[:3])
        cyc = cycles(graph)
        found += len(cyc)
        print(f"  {name:12} {len(mods):3} modules, {sum(n for n, _ in lines):6} lines; largest: {big}")
        for c in cyc:
            print(f"    CYCLE: {' ↔ '.join('::'.join(p) or 'lib' for p in c)}")
    print(f"import cycles between modules: {found}")
    if "--check" in sys.argv and found:
        sys.exit(1)


if __name__ == "__main__":
    main()
