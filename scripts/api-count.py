#!/usr/bin/env python3
"""Counts (and lists) the public items of each workspace crate at a git ref, from source.

Usage:
  scripts/api-count.py [REF]                 # a table per crate; REF defaults to HEAD
  scripts/api-count.py [REF] --list CRATE    # every counted item of one crate (e.g. core)

Run from anywhere inside the repository. Read from git (`git show REF:path`), so any
commit can be counted without checking it out, e.g. `scripts/api-count.py eda459b`.

What is counted, per crate (every .rs file under crates/*/src, examples/src, benches/src):
  - fns: lines starting (after indentation) with `pub fn` / `pub const fn` /
    `pub async fn` / `pub unsafe fn` -- functions and methods;
  - types: `pub struct|enum|trait|type|const|static|mod` -- types, constants, modules;
  - root: the names the crate's lib.rs re-exports with `pub use` or declares with
    `pub mod` (what `use crate_name::*` brings in).
`pub(crate)` and `pub(super)` are not `pub`. Unit-test modules (from a `#[cfg(test)]`
followed by `mod` to the end of the file) and items under `#[cfg(doctest)]` are left out.
It counts what is declared `pub`, reachable or not: an upper bound that compares across
refs; `cargo doc` shows what is reachable.
"""
import re
import subprocess
import sys
from collections import defaultdict

ITEM = re.compile(
    r"^\s*pub\s+(?:(const|async|unsafe)\s+)?(fn|struct|enum|trait|type|const|static|mod|use)\s+"
    r"([A-Za-z_][A-Za-z0-9_]*)?"
)


def git(*args):
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def crate_of(path):
    return path.split("/")[1] if path.startswith("crates/") else path.split("/")[0]


def count(ref):
    files = [f for f in git("ls-tree", "-r", "--name-only", ref).splitlines()
             if f.endswith(".rs") and re.match(r"(crates/[^/]+|examples|benches)/src/", f)]
    items = defaultdict(list)  # crate -> [(kind, name, file)]
    roots = defaultdict(list)  # crate -> [name]
    for f in files:
        crate = crate_of(f)
        text = git("show", f"{ref}:{f}")
        test_mod = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod\s", text, re.M)
        if test_mod:
            text = text[: test_mod.start()]
        lines = text.split("\n")
        for n, line in enumerate(lines):
            m = ITEM.match(line)
            if not m or m.group(2) == "use":
                continue
            if any("#[cfg(doctest)]" in prev for prev in lines[max(0, n - 3):n]):
                continue
            items[crate].append(("fn" if m.group(2) == "fn" else "type", m.group(3) or "?", f))
        if f.endswith("/src/lib.rs"):
            for block in re.findall(r"^pub use [^;]*;", text, re.M | re.S):
                body = re.sub(r"\s+as\s+", " as ", block[len("pub use "):-1])
                names = [n for n in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?=[,}]|$)", body)
                         if n != "self"]
                roots[crate].extend(names or [body])
            roots[crate].extend(re.findall(r"^pub mod ([A-Za-z_][A-Za-z0-9_]*)", text, re.M))
    return items, roots


def main(argv):
    args = [a for a in argv if not a.startswith("--")]
    listing = argv[argv.index("--list") + 1] if "--list" in argv else None
    if listing:
        args.remove(listing)
    ref = args[0] if args else "HEAD"
    items, roots = count(ref)
    short = git("rev-parse", "--short", ref).strip()
    if listing:
        print(f"# public items of {listing} at {ref} ({short})")
        for kind, name, f in sorted(items[listing], key=lambda i: (i[2], i[1])):
            print(f"{kind:<5} {name:<32} {f}")
        print(f"root  {', '.join(roots[listing])}")
        return
    print(f"# public API at {ref} ({short})")
    print(f"{'crate':<10} {'fns':>5} {'types+consts+mods':>18} {'root names':>11}")
    for crate in sorted(set(items) | set(roots)):
        fns = sum(1 for i in items[crate] if i[0] == "fn")
        print(f"{crate:<10} {fns:>5} {len(items[crate]) - fns:>18} {len(roots[crate]):>11}")


if __name__ == "__main__":
    main(sys.argv[1:])
