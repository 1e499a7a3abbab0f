#!/usr/bin/env python3
"""Finds import cycles among the files of Rust crates.

Usage: .ci/import_cycles.py SRC_DIR [SRC_DIR ...]
       (e.g. .ci/import_cycles.py daemon/src modules/*/src)

Each SRC_DIR is one crate's `src` directory. The script reads every `.rs`
file under it, collects the paths that point into the same crate -- `use
crate::...`, `use super::...` and `use self::...` trees (braces expanded) and
`crate::x::...`, `super::...` and `self::...` paths anywhere in the code -- and
maps each to the file that defines it: `crate::a::b::c` names the longest of
`src/a/b/c.rs`, `src/a/b/c/mod.rs`, `src/a/b.rs`, `src/a/b/mod.rs`, `src/a.rs`,
`src/a/mod.rs` that exists, else the crate root (`lib.rs`, else `main.rs`);
`super::` and `self::` are resolved from the module the path is written in,
inline modules (`mod tests { ... }`) included.

It then looks for cycles in that file graph. It prints every strongly
connected group of two or more files, one cycle through it, and the imports
that tie the group together, and exits with status 1 if there is any; with
status 0 (printing nothing) if there is none; with status 2 on bad arguments.

Deliberately out of scope: bare paths to a child module (`redis::open` in
`drivers/mod.rs`, where `mod redis;` is declared) are not edges, since a
parent naming its children is how Rust modules are built; `#[path]`
attributes and macro-generated paths are not followed; comments and string
literals are ignored. Files under `src/bin/` are roots of their own crates and
are checked against their own directory.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# A path that starts in the current crate, e.g. `crate::a::b`, `super::super::x`.
PATH = re.compile(
    r"(?<![A-Za-z0-9_:])((?:crate|self|super)(?:\s*::\s*(?:" + IDENT + r"|\*))+)"
)


def strip_comments_and_strings(text):
    """Blanks out comments, string and char literals, keeping line numbers."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 10]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            end = n if end < 0 else end + 1 + len(hashes)
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}'), not a lifetime ('a).
            m = re.match(r"'(?:\\.|\\u\{[0-9A-Fa-f]+\}|[^\\'])'", text[i:i + 12])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def module_of(src, path):
    """The module path of a file (a list of names) within its crate, the
    directory its crate's modules live in, and the crate root file when it is
    not `src/lib.rs`/`src/main.rs` (binaries under `src/bin/`)."""
    rel = os.path.relpath(path, src).replace(os.sep, "/")
    parts = rel[:-3].split("/")
    root, root_file = src, None
    if parts[0] == "bin" and len(parts) >= 2:
        # `src/bin/x.rs` is a crate root whose modules sit beside it;
        # `src/bin/x/main.rs` one whose modules sit in `src/bin/x/`.
        if len(parts) == 2:
            return [], os.path.join(src, "bin"), path
        root = os.path.join(src, "bin", parts[1])
        parts = parts[2:]
        if parts == ["main"]:
            return [], root, path
        root_file = os.path.join(root, "main.rs")
    if parts in (["lib"], ["main"]):
        return [], root, root_file
    if parts[-1] == "mod":
        parts = parts[:-1]
    return parts, root, root_file


def crate_root_file(root, bin_root_file):
    if bin_root_file:
        return bin_root_file
    for name in ("lib.rs", "main.rs"):
        candidate = os.path.join(root, name)
        if os.path.isfile(candidate):
            return candidate
    return None


def resolve(root, names, bin_root_file):
    """The file defining the longest prefix of module path `names`."""
    for k in range(len(names), 0, -1):
        base = os.path.join(root, *names[:k])
        for candidate in (base + ".rs", os.path.join(base, "mod.rs")):
            if os.path.isfile(candidate):
                return candidate
    return crate_root_file(root, bin_root_file)


def expand_use_tree(tree):
    """`a::{b, c::{d, self}}` -> ['a::b', 'a::c::d', 'a::c::self']."""
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)
    tree = re.sub(r"\s+", "", tree)

    def split_top(s):
        items, depth, cur = [], 0, ""
        for ch in s:
            if ch == "," and depth == 0:
                items.append(cur)
                cur = ""
                continue
            depth += ch == "{"
            depth -= ch == "}"
            cur += ch
        if cur:
            items.append(cur)
        return items

    def expand(s):
        brace = s.find("{")
        if brace < 0:
            return [s] if s else []
        prefix, inner = s[:brace], s[brace + 1:s.rfind("}")]
        result = []
        for item in split_top(inner):
            for tail in expand(item):
                result.append(prefix + tail)
        return result

    return expand(tree)


def edges_of(src, path):
    """(target file, line number, path text) for every in-crate path of a file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = strip_comments_and_strings(f.read())
    module, root, bin_root_file = module_of(src, path)
    found = []

    # Inline modules: (depth at which the module's body opens, name).
    inline = []
    depth = 0
    line_starts = [0]
    for m in re.finditer("\n", text):
        line_starts.append(m.end())

    def line_of(pos):
        lo, hi = 0, len(line_starts) - 1
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if line_starts[mid] <= pos:
                lo = mid
            else:
                hi = mid - 1
        return lo + 1

    # Record, at every position, the inline module stack; done by walking the
    # text once and noting stack changes at braces.
    stack_at = []  # (position, tuple(stack))
    token = re.compile(r"\bmod\s+(" + IDENT + r")\s*\{|[{}]")
    for m in token.finditer(text):
        if m.group(0) == "{":
            depth += 1
        elif m.group(0) == "}":
            if inline and inline[-1][0] == depth:
                inline.pop()
                stack_at.append((m.end(), tuple(n for _, n in inline)))
            depth -= 1
        else:
            depth += 1
            inline.append((depth, m.group(1)))
            stack_at.append((m.end(), tuple(n for _, n in inline)))

    def inline_stack(pos):
        current = ()
        for at, stack in stack_at:
            if at > pos:
                break
            current = stack
        return list(current)

    def target(path_text, pos):
        names = [p for p in path_text.split("::") if p]
        here = module + inline_stack(pos)
        if names[0] == "crate":
            absolute = names[1:]
        else:
            absolute = list(here)
            while names and names[0] in ("self", "super"):
                if names[0] == "super":
                    if not absolute:
                        return None
                    absolute.pop()
                names = names[1:]
            absolute += names
        absolute = [n for n in absolute if n not in ("self", "*")]
        return resolve(root, absolute, bin_root_file)

    # `use` trees first (they may hold braces the plain scan cannot read),
    # then every other in-crate path.
    use_spans = []
    for m in re.finditer(r"\buse\s+([^;]*);", text):
        use_spans.append((m.start(), m.end()))
        for p in expand_use_tree(m.group(1)):
            p = p.lstrip(":")
            if p.split("::")[0] in ("crate", "self", "super"):
                t = target(p, m.start())
                if t:
                    found.append((t, line_of(m.start()), "use " + p))
    for m in PATH.finditer(text):
        if any(a <= m.start() < b for a, b in use_spans):
            continue
        p = re.sub(r"\s+", "", m.group(1))
        if p in ("self", "crate", "super"):
            continue
        t = target(p, m.start())
        if t:
            found.append((t, line_of(m.start()), p))
    return found


def strongly_connected(nodes, graph):
    """Tarjan's algorithm, iterative; yields lists of nodes."""
    index, low, on_stack, stack, result = {}, {}, set(), [], []
    counter = [0]
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(graph.get(start, ()))))]
        index[start] = low[start] = counter[0]
        counter[0] += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == node:
                        break
                result.append(sorted(component))
    return result


def one_cycle(component, graph):
    """A shortest cycle through the first file of a strongly connected group."""
    members = set(component)
    start = component[0]
    previous = {start: None}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for child in sorted(graph.get(node, ())):
            if child not in members:
                continue
            if child == start:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])
                return list(reversed(path)) + [start]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return [start]


def check(src):
    files = []
    for dirpath, _, names in os.walk(src):
        files += [os.path.join(dirpath, n) for n in sorted(names) if n.endswith(".rs")]
    files.sort()
    graph, why = {}, {}
    for f in files:
        for t, line, text in edges_of(src, f):
            if t == f:
                continue
            graph.setdefault(f, set()).add(t)
            why.setdefault((f, t), []).append((line, text))
    cycles = [c for c in strongly_connected(files, graph) if len(c) > 1]
    for component in cycles:
        rel = [os.path.relpath(f, src) for f in component]
        print(f"{src}: import cycle among {len(component)} files: {', '.join(rel)}")
        cycle = one_cycle(component, graph)
        print("  for example: " + " -> ".join(os.path.relpath(f, src) for f in cycle))
        members = set(component)
        for f in component:
            for t in sorted(graph.get(f, ())):
                if t in members:
                    line, text = why[(f, t)][0]
                    print(
                        f"  {os.path.relpath(f, src)}:{line} -> {os.path.relpath(t, src)} ({text})"
                    )
    return len(cycles)


def main(argv):
    if len(argv) < 2 or any(a in ("-h", "--help") for a in argv[1:]):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    bad = [d for d in argv[1:] if not os.path.isdir(d)]
    if bad:
        print(f"not a directory: {', '.join(bad)}", file=sys.stderr)
        return 2
    total = sum(check(d.rstrip("/")) for d in argv[1:])
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
