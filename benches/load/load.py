#!/usr/bin/env python3
"""Issue 12's performance set: the gateway against the mock called directly, in one run.

Runs, each repeated (`--repeats`, default 2) with the mock measured directly in the same
repeat: added latency at a fixed open-loop rate (non-streamed, and streamed), throughput
(closed loop, as fast as it goes), LiteLLM's proxy on the same mock, and N concurrent open
streams with the gateway's memory. Writes a markdown table. See README.md.
"""
import argparse
import datetime
import os
import subprocess
import threading
import time

import common as c


def added(direct, through):
    return through["p50_us"] - direct["p50_us"], through["p99_us"] - direct["p99_us"]


def latency_pairs(args, gw_url, mock_url, stream, rate, extra=None):
    """Per repeat: the mock directly, then the gateway (then the others: `extra` maps a
    name to a URL, LiteLLM or a second gateway build), at `rate`."""
    body = c.chat_body(stream)
    rows = []
    for r in range(1, args.repeats + 1):
        row = {"repeat": r}
        row["direct"] = c.summary(
            c.oha(mock_url, body, args.load_cpus, duration=args.seconds, rate=rate, connections=args.connections)
        )
        row["nexus"] = c.summary(
            c.oha(gw_url, body, args.load_cpus, duration=args.seconds, rate=rate, connections=args.connections)
        )
        for name, url in (extra or {}).items():
            row[name] = c.summary(
                c.oha(url, body, args.load_cpus, duration=args.seconds, rate=rate, connections=args.connections)
            )
        rows.append(row)
        print(f"  {'stream' if stream else 'json'} @{rate}/s repeat {r}: " + ", ".join(
            f"{k} p50 {v['p50_us']:.0f} us p99 {v['p99_us']:.0f} us ({v['failed']} failed)"
            for k, v in row.items() if k != "repeat"), flush=True)
    return rows


def throughput(args, gw_url, mock_url, litellm_url=None, compare_url=None, floor_url=None):
    body = c.chat_body(False)
    rows = []
    for r in range(1, args.repeats + 1):
        row = {"repeat": r}
        for name, url in (("direct", mock_url), ("nexus", gw_url), ("compare", compare_url), ("floor", floor_url),
                          ("litellm", litellm_url)):
            if url:
                row[name] = c.summary(
                    c.oha(url, body, args.load_cpus, duration=args.throughput_seconds, connections=args.throughput_connections)
                )
        rows.append(row)
        print(f"  throughput repeat {r}: " + ", ".join(
            f"{k} {v['rps']:.0f}/s ({v['failed']} failed)" for k, v in row.items() if k != "repeat"), flush=True)
    return rows


def streams(args, logdir, floor=False):
    """N streams held open at once through a gateway of its own (or, with `floor`, the
    passthrough) over a slow-streaming mock."""
    limit = int(subprocess.run(["bash", "-c", "ulimit -n"], capture_output=True, text=True).stdout.strip() or 1024)
    # The gateway holds two sockets per stream (client and upstream).
    n = min(args.streams, (limit - 256) // 2)
    mock_port, gw_port = c.free_port(), c.free_port()
    # 20 events a second apart: every stream stays open about 20 s.
    mock = c.start_mock(logdir, mock_port, args.mock_cpus, ["--chunks", "20", "--chunk-interval-ms", "1000"])
    config = os.path.join(logdir, "streams.toml")
    with open(config, "w") as f:
        f.write(c.subprocess.run(
            ["python3", os.path.join(c.HERE, "fleet.py"), "--backends", str(args.backends),
             "--upstream", f"http://127.0.0.1:{mock_port}",
             "--max-concurrency", str(max(200, 2 * n // max(args.backends, 1) + 1))],
            capture_output=True, text=True, check=True).stdout)
    if floor:
        gw = c.start_passthrough(logdir, args.passthrough, mock_port, gw_port, args.gateway_cpus, name="floor-streams")
    else:
        gw = c.start_gateway(logdir, config, gw_port, args.gateway_cpus, name="gateway-streams", exe=args.nexus,
                             log_level=args.log_level)
    # One request warms the pool and the allocator, so the baseline is a serving gateway's.
    c.oha(f"http://127.0.0.1:{gw_port}/v1/chat/completions", c.chat_body(True), args.load_cpus, requests=1, connections=1)
    base = c.rss_kb(gw.pid)
    peak = {"rss": base, "fds": 0}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], c.rss_kb(gw.pid))
            peak["fds"] = max(peak["fds"], c.open_fds(gw.pid))
            time.sleep(0.25)

    t = threading.Thread(target=sample)
    t.start()
    result = c.summary(c.oha(
        f"http://127.0.0.1:{gw_port}/v1/chat/completions", c.chat_body(True), args.load_cpus,
        requests=n, connections=n, timeout_s=120))
    stop.set()
    t.join()
    after = c.rss_kb(gw.pid)
    gw.stop()
    mock.stop()
    out = {"n": n, "fd_limit": limit, "base_kb": base, "peak_kb": peak["rss"], "after_kb": after,
           "peak_fds": peak["fds"], "result": result}
    print(f"  {n} streams{' (floor)' if floor else ''}: {result['ok']} ok, {result['failed']} failed, RSS {base/1024:.1f} -> "
          f"{peak['rss']/1024:.1f} MB (peak), {after/1024:.1f} MB after; {peak['fds']} fds at peak", flush=True)
    return out


def fmt_lat(rows, names):
    out = ["| repeat | " + " | ".join(f"{n} p50 | {n} p99" for n in names)
           + " | " + " | ".join(f"{n} added p50 | {n} added p99" for n in names if n != "direct")
           + " | failed |",
           "|" + " --- |" * (1 + 2 * len(names) + 2 * (len(names) - 1) + 1)]
    for row in rows:
        cells = [str(row["repeat"])]
        for n in names:
            cells += [f"{row[n]['p50_us']:.0f} µs", f"{row[n]['p99_us']:.0f} µs"]
        for n in names:
            if n != "direct":
                a50, a99 = added(row["direct"], row[n])
                cells += [f"{a50:.0f} µs", f"{a99:.0f} µs"]
        cells.append(", ".join(f"{n} {row[n]['failed']}" for n in names))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(c.ROOT, "target", "load", "results.md"))
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seconds", type=int, default=8, help="per latency series")
    p.add_argument("--rate", type=int, default=1000, help="requests/s of the latency series")
    p.add_argument("--connections", type=int, default=32, help="client connections of the latency series")
    p.add_argument("--throughput-seconds", type=int, default=5)
    p.add_argument("--throughput-connections", type=int, default=64)
    p.add_argument("--backends", type=int, default=100)
    p.add_argument("--streams", type=int, default=10000)
    p.add_argument("--litellm-venv", default="/work/venvs/litellm")
    p.add_argument("--litellm-rate", type=int, default=50,
                   help="the fixed rate at which LiteLLM, the gateway and the mock are compared")
    p.add_argument("--gateway-cpus", default="0", help="taskset list for the gateway and LiteLLM ('' for none)")
    p.add_argument("--mock-cpus", default="0",
                   help="taskset list for the mock in the latency parts (beside the gateway: see README.md)")
    p.add_argument("--throughput-mock-cpus", default="1",
                   help="taskset list for the mock in the throughput part (beside oha, the gateway alone)")
    p.add_argument("--load-cpus", default="1", help="taskset list for oha")
    p.add_argument("--log-level", default="info",
                   help="the gateways' --log-level: info (nexus serve's default: one line a request) or error")
    p.add_argument("--nexus", default=os.path.join(c.RELEASE, "nexus"), help="the gateway binary")
    p.add_argument("--compare", default=None,
                   help="a second gateway binary (a build from before a change), measured after the first "
                        "in every repeat of the latency and throughput parts")
    p.add_argument("--passthrough", default=os.path.join(c.RELEASE, "examples", "passthrough"),
                   help="the floor: the gateway's HTTP server and upstream client with nothing in between "
                        "(crates/gateway/examples/passthrough.rs), measured beside the gateway unless `--skip floor`")
    p.add_argument("--skip", default="",
                   help="comma list of parts to skip: latency,stream,throughput,litellm,streams,floor")
    args = p.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    for exe in (args.nexus, os.path.join(c.RELEASE, "nexus-mock"), args.compare,
                None if "floor" in skip else args.passthrough):
        if exe and not os.path.exists(exe):
            c.die(f"{exe} is missing: run `cargo build --release -p nexus-cli -p nexus-testkit --bins` and "
                  "`cargo build --release -p nexus-gateway --example passthrough` (run.sh does)")
    if not c.shutil.which("oha"):
        c.die("oha is not on PATH: `cargo install oha --locked`")

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    logdir = os.path.join(os.path.dirname(args.out), f"logs-{stamp}")
    os.makedirs(logdir, exist_ok=True)
    load_before = c.uptime()
    started = time.time()
    mock_port, gw_port, ll_port = c.free_port(), c.free_port(), c.free_port()
    mock = c.start_mock(logdir, mock_port, args.mock_cpus)
    config = os.path.join(logdir, "fleet.toml")
    with open(config, "w") as f:
        f.write(subprocess.run(
            ["python3", os.path.join(c.HERE, "fleet.py"), "--backends", str(args.backends),
             "--upstream", f"http://127.0.0.1:{mock_port}"],
            capture_output=True, text=True, check=True).stdout)
    gw = c.start_gateway(logdir, config, gw_port, args.gateway_cpus, exe=args.nexus, log_level=args.log_level)
    cmp_gw, cmp_url = None, None
    if args.compare:
        cmp_port = c.free_port()
        cmp_gw = c.start_gateway(logdir, config, cmp_port, args.gateway_cpus, name="gateway-compare", exe=args.compare,
                                 log_level=args.log_level)
        cmp_url = f"http://127.0.0.1:{cmp_port}/v1/chat/completions"
    floor, floor_url = None, None
    if "floor" not in skip:
        floor_port = c.free_port()
        floor = c.start_passthrough(logdir, args.passthrough, mock_port, floor_port, args.gateway_cpus)
        floor_url = f"http://127.0.0.1:{floor_port}/v1/chat/completions"
    litellm = None
    if "litellm" not in skip:
        litellm = c.start_litellm(logdir, args.litellm_venv, mock_port, ll_port, args.gateway_cpus)
        if litellm is None:
            print(f"  no LiteLLM at {args.litellm_venv}: its rows are skipped", flush=True)
    mock_url = f"http://127.0.0.1:{mock_port}/v1/chat/completions"
    gw_url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    ll_url = f"http://127.0.0.1:{ll_port}/v1/chat/completions" if litellm else None
    # Warm: connections, pools, allocators, LiteLLM's imports.
    for url in filter(None, (mock_url, gw_url, cmp_url, floor_url, ll_url)):
        c.oha(url, c.chat_body(False), args.load_cpus, requests=500, connections=8)
        c.oha(url, c.chat_body(True), args.load_cpus, requests=200, connections=8)
    gw_idle_kb = c.rss_kb(gw.pid)

    compare = {name: url for name, url in (("compare", cmp_url), ("floor", floor_url)) if url}
    names = ["direct", "nexus"] + list(compare)
    results = {}
    try:
        if "latency" not in skip:
            results["latency"] = latency_pairs(args, gw_url, mock_url, False, args.rate, extra=compare)
        if "stream" not in skip:
            results["stream"] = latency_pairs(args, gw_url, mock_url, True, args.rate, extra=compare)
        if "throughput" not in skip:
            c.repin(mock.pid, args.throughput_mock_cpus)
            results["throughput"] = throughput(args, gw_url, mock_url, ll_url, cmp_url, floor_url)
            c.repin(mock.pid, args.mock_cpus)
        if ll_url:
            results["litellm"] = latency_pairs(args, gw_url, mock_url, False, args.litellm_rate,
                                               extra={"litellm": ll_url})
        gw_kb = c.rss_kb(gw.pid)
        ll_kb = c.rss_kb(litellm.pid) if litellm else None
    finally:
        if litellm:
            litellm.stop()
        if cmp_gw:
            cmp_gw.stop()
        if floor:
            floor.stop()
        gw.stop()
        mock.stop()
    if "streams" not in skip:
        results["streams"] = [streams(args, logdir)]
        if "floor" not in skip:
            results["streams"].append(streams(args, logdir, floor=True))
    load_after = c.uptime()

    lines = [f"# Gateway load results, {stamp} UTC", "",
             f"Command: `benches/load/run.sh {' '.join(os.sys.argv[1:])}`; machine: {os.cpu_count()} cores; "
             f"load before: `{load_before}`; after: `{load_after}`; took {time.time() - started:.0f} s.",
             f"Gateway config: {args.backends} backends serving `mock-model` from one `nexus-mock` "
             f"(half local, half cloud and priced, a monthly budget). Pinning: gateway and LiteLLM on "
             f"CPU {args.gateway_cpus or 'any'}, mock on {args.mock_cpus or 'any'} "
             f"({args.throughput_mock_cpus or 'any'} for throughput), oha on {args.load_cpus or 'any'}.",
             f"Gateway: `{args.nexus}` at `--log-level {args.log_level}`" + (f"; compared with `{args.compare}`" if args.compare else "") + ".", ""]
    if "latency" in results:
        lines += [f"## Added latency, non-streamed, {args.rate} req/s open loop, {args.seconds} s per series "
                  f"({args.connections} connections, latency corrected)", "",
                  fmt_lat(results["latency"], names), ""]
    if "stream" in results:
        first = [{k: (v if k == "repeat" else dict(v, p50_us=v["first_p50_us"], p99_us=v["first_p99_us"]))
                  for k, v in row.items()} for row in results["stream"]]
        lines += [f"## Streamed, {args.rate} req/s open loop: time to the first byte of the answer "
                  "(oha's first-byte times; the first event follows its headers)", "",
                  fmt_lat(first, names), "",
                  "Whole stream (the mock sends its events at once):", "",
                  fmt_lat(results["stream"], names), ""]
    if "throughput" in results:
        lines += [f"## Throughput, closed loop, {args.throughput_connections} connections, "
                  f"{args.throughput_seconds} s", "",
                  "| repeat | direct | nexus | nexus / direct | compare | compare / direct | floor | floor / direct "
                  "| litellm | litellm / direct | failed |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for row in results["throughput"]:
            d, n = row["direct"]["rps"], row["nexus"]["rps"]
            other = [row.get("compare"), row.get("floor"), row.get("litellm")]
            lines.append(
                f"| {row['repeat']} | {d:.0f}/s | {n:.0f}/s | {n / d:.0%} | "
                + " | ".join(f"{o['rps']:.0f}/s | {o['rps'] / d:.0%}" if o else "- | -" for o in other)
                + " | " + ", ".join(f"{k} {v['failed']}" for k, v in row.items() if k != "repeat") + " |")
        lines.append("")
    if "litellm" in results:
        lines += [f"## LiteLLM side by side, non-streamed, {args.litellm_rate} req/s open loop", "",
                  fmt_lat(results["litellm"], ["direct", "nexus", "litellm"]), ""]
        for row in results["litellm"]:
            n50, _ = added(row["direct"], row["nexus"])
            l50, _ = added(row["direct"], row["litellm"])
            lines.append(f"- repeat {row['repeat']}: LiteLLM adds {l50:.0f} µs at the median, Nexus {n50:.0f} µs: "
                         f"{l50 / max(n50, 1):.0f}×")
        lines.append("")
    if gw_idle_kb:
        lines += [f"Gateway resident memory: {gw_idle_kb / 1024:.1f} MB warm, {gw_kb / 1024:.1f} MB after the "
                  "series" + (f"; LiteLLM {ll_kb / 1024:.1f} MB" if ll_kb else "") + ".", ""]
    if "streams" in results:
        first = results["streams"][0]
        lines += [f"## {first['n']} concurrent open streams (20 events a second apart)", "",
                  "| through | streams | ok | failed | RSS before | RSS peak | per stream | RSS after | fds at peak |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for s, name in zip(results["streams"], ("nexus", "floor")):
            r = s["result"]
            per = (s["peak_kb"] - s["base_kb"]) * 1024 / max(s["n"], 1)
            lines.append(f"| {name} | {s['n']} | {r['ok']} | {r['failed']} | {s['base_kb'] / 1024:.1f} MB | "
                         f"{s['peak_kb'] / 1024:.1f} MB | {per / 1024:.1f} KB | {s['after_kb'] / 1024:.1f} MB | "
                         f"{s['peak_fds']} |")
        lines.append("")
        if first["n"] < args.streams:
            lines += [f"(Capped at {first['n']}: the open-file limit here is {first['fd_limit']} and a proxy holds two "
                      f"sockets per stream; raise `ulimit -n` to run {args.streams}.)", ""]
        for s, name in zip(results["streams"], ("nexus", "floor")):
            if s["result"]["failed"]:
                lines += [f"Failures ({name}): codes {s['result']['codes']}, errors {s['result']['errors']}", ""]
    c.write_report(args.out, lines)
    print(f"\nwritten to {args.out}; logs in {logdir}")


if __name__ == "__main__":
    main()
