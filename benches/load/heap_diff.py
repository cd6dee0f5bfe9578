#!/usr/bin/env python3
"""Heap bytes per open stream by allocation path: the difference of two massif snapshots.

    heap_diff.py WARM.ms OPEN.ms STREAMS [--depth D] [--min BYTES]

WARM and OPEN are detailed snapshots (`vgdb ... detailed_snapshot FILE`) of one process,
before and while STREAMS streams are open. Each allocation path (the first D frames above
the allocator) is printed with its bytes in OPEN minus WARM, divided by STREAMS, largest
first. heap.sh runs it.
"""
import argparse
import collections
import re

# Frames of the allocator and of the standard collections' growth: the path starts at
# the first frame that is none of these, the code that asked for the memory.
ALLOCATOR = re.compile(
    r"(^alloc::|__rdl_alloc|__rust_alloc|malloc|realloc|calloc|RawVec|finish_grow|"
    r"do_reserve|raw_vec|core::ptr|<alloc::|::reserve\b|grow_one|with_capacity\b|"
    r"hashbrown::raw|exchange_malloc|UnknownInlinedFun|^alloc \(|alloc_impl|grow_impl|"
    r"^grow |^new<|Box<T>::new|Arc<T>::new|Vec<T,A>::push|^allocate \(|box_new_uninit|"
    r"with_capacity_in|^pin<|^push_back<|^push<|from_elem)"
)
NODE = re.compile(r"^( *)n(\d+): (\d+) (.*)$")


def paths(snapshot, depth):
    """Bytes by allocation path in a detailed massif snapshot (its leaves)."""
    out = collections.Counter()
    stack = []
    with open(snapshot) as f:
        for line in f:
            m = NODE.match(line.rstrip("\n"))
            if not m:
                continue
            level, children, size, frame = len(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
            frame = re.sub(r"^0x[0-9A-F]+: ", "", frame)
            frame = re.sub(r" \(in /[^)]*\)$", "", frame)
            frame = frame.replace("{{closure}}", "{closure}")
            del stack[level:]
            stack.append(frame)
            if children == 0:
                frames = [f for f in stack[1:] if not ALLOCATOR.search(f)]
                out[" <- ".join(frames[:depth]) or stack[-1]] += size
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("warm")
    p.add_argument("open")
    p.add_argument("streams", type=int)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--min", type=int, default=20, help="smallest bytes a stream to print")
    a = p.parse_args()
    warm, opened = paths(a.warm, a.depth), paths(a.open, a.depth)
    total = sum(opened.values()) - sum(warm.values())
    print(f"heap: {total} bytes more with {a.streams} streams open = {total / a.streams:.0f} bytes a stream")
    rows = sorted(((opened[k] - warm[k], k) for k in set(warm) | set(opened)), reverse=True)
    for diff, path in rows:
        if abs(diff) / a.streams >= a.min:
            print(f"{diff / a.streams:8.0f}  {path}")


if __name__ == "__main__":
    main()
