#!/usr/bin/env python3
"""Issue 12's soak: minutes of mixed load with random upstream faults through the gateway.

Two open-loop `oha` runs at once (non-streamed and streamed, together `--rate` requests/s)
through `nexus serve` over one `nexus-mock` that plays a random fault on `--fault-rate` of
its inference requests. Reports the gateway's resident memory over the run (growth from
the first sample after warm-up to the end), what clients saw by kind, what the gateway
counted by upstream status, the faults the mock played, and the gateway's settled spend
against the usage the mock itself declared, priced the same way (equal to the cent).

The default faults all end an attempt before an answer's first byte (500, 429 with
retry-after, no headers until `first_byte_timeout_ms`), so every answer the mock finished
is settled at the usage it declared and nothing else is: the spend check is exact. Faults
that cut an answer midway (`reset`, `hang-mid`) are settled at an estimate by design
(docs/gateway.md); with them in `--faults` the report shows the difference instead.
"""
import argparse
import datetime
import os
import subprocess
import threading
import time

import common as c


def scrape(port):
    m = c.metrics(port)
    by = lambda prefix: {k: v for k, v in m.items() if k.startswith(prefix)}
    return m, by


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--rate", type=int, default=500, help="requests/s, both runs together")
    p.add_argument("--stream-share", type=float, default=0.3, help="share of the rate that streams")
    p.add_argument("--fault-rate", type=float, default=0.05, help="share of upstream requests faulted")
    p.add_argument("--faults", default="500,429,hang", help="nexus-mock --faults")
    p.add_argument("--backends", type=int, default=4)
    p.add_argument("--price", type=float, default=10.0, help="USD per million tokens, in and out")
    p.add_argument("--first-byte-ms", type=int, default=1000, help="[server] first_byte_timeout_ms")
    p.add_argument("--warmup-seconds", type=int, default=120,
                   help="the start sample is taken after this (pools and the allocator fill in the first two minutes)")
    p.add_argument("--no-scrape", action="store_true",
                   help="do not scrape /metrics every 5 s (shows the exporter's unscraped growth)")
    p.add_argument("--out", default=os.path.join(c.ROOT, "target", "load", "soak.md"))
    p.add_argument("--gateway-cpus", default="0")
    p.add_argument("--mock-cpus", default="1")
    p.add_argument("--load-cpus", default="1")
    args = p.parse_args()
    for exe in ("nexus", "nexus-mock"):
        if not os.path.exists(os.path.join(c.RELEASE, exe)):
            c.die(f"{c.RELEASE}/{exe} is missing: run `cargo build --release -p nexus-cli -p nexus-testkit --bins` (soak.sh does)")
    seconds = int(args.minutes * 60)
    if seconds <= args.warmup_seconds:
        c.die(f"--minutes {args.minutes} is not longer than the {args.warmup_seconds} s warm-up")
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    logdir = os.path.join(os.path.dirname(args.out), f"soak-logs-{stamp}")
    os.makedirs(logdir, exist_ok=True)
    load_before = c.uptime()

    mock_port, gw_port = c.free_port(), c.free_port()
    mock = c.start_mock(logdir, mock_port, args.mock_cpus,
                        ["--fault-rate", str(args.fault_rate), "--faults", args.faults, "--fault-seed", "12"])
    config = os.path.join(logdir, "soak.toml")
    with open(config, "w") as f:
        f.write(subprocess.run(
            ["python3", os.path.join(c.HERE, "fleet.py"), "--backends", str(args.backends),
             "--upstream", f"http://127.0.0.1:{mock_port}", "--cloud-share", "1",
             "--price", str(args.price), "--first-byte-ms", str(args.first_byte_ms)],
            capture_output=True, text=True, check=True).stdout)
    gw = c.start_gateway(logdir, config, gw_port, args.gateway_cpus)
    url = f"http://127.0.0.1:{gw_port}/v1/chat/completions"
    stream_rate = max(1, round(args.rate * args.stream_share))
    json_rate = max(1, args.rate - stream_rate)

    samples = []
    stop = threading.Event()

    def sample():
        # Scraped every 5 s, as Prometheus would: the exporter keeps histogram samples
        # until a scrape folds them into buckets, so an unscraped gateway grows.
        t0 = time.time()
        while not stop.is_set():
            if not args.no_scrape:
                try:
                    c.metrics(gw_port)
                except Exception as e:  # the report says what happened; keep sampling
                    print(f"soak: /metrics failed: {e}", flush=True)
            samples.append((time.time() - t0, c.rss_kb(gw.pid), c.open_fds(gw.pid)))
            stop.wait(5)

    sampler = threading.Thread(target=sample)
    results = {}

    def run(name, stream, rate):
        results[name] = c.oha(url, c.chat_body(stream), args.load_cpus, duration=seconds, rate=rate,
                              connections=128, timeout_s=30)

    runs = [threading.Thread(target=run, args=("json", False, json_rate)),
            threading.Thread(target=run, args=("stream", True, stream_rate))]
    print(f"soak: {seconds} s at {json_rate} + {stream_rate} streamed req/s, faults {args.faults} "
          f"on {args.fault_rate:.0%} of upstream requests; logs in {logdir}", flush=True)
    sampler.start()
    for t in runs:
        t.start()
    for t in runs:
        t.join()
    stop.set()
    sampler.join()
    # Let settlements land (a stream's guard settles when its body ends).
    time.sleep(2)
    m, by = scrape(gw_port)
    end_rss = c.rss_kb(gw.pid)
    end_fds = c.open_fds(gw.pid)
    gw.stop()
    tally = c.mock_tally(mock.stop())
    load_after = c.uptime()

    start = next((s for s in samples if s[0] >= args.warmup_seconds), samples[-1] if samples else (0, end_rss, 0))
    growth = (end_rss - start[1]) / max(start[1], 1)
    spend_metric = sum(v for k, v in m.items() if k.startswith("nexus_spend_usd_total"))
    remaining = m.get("nexus_budget_remaining_usd")
    settled_budget = 1_000_000.0 - remaining if remaining is not None else None
    tokens_in = sum(v for k, v in m.items() if k.startswith("nexus_tokens_total") and 'direction="input"' in k)
    tokens_out = sum(v for k, v in m.items() if k.startswith("nexus_tokens_total") and 'direction="output"' in k)
    expected = (tally["prompt_tokens"] + tally["completion_tokens"]) * args.price / 1e6
    upstream = {k.split("{", 1)[1].rstrip("}"): int(v) for k, v in m.items()
                if k.startswith("nexus_upstream_requests_total")}
    by_status = {}
    for labels, n in upstream.items():
        status = labels.split('status="', 1)[1].split('"', 1)[0]
        by_status[status] = by_status.get(status, 0) + n

    lines = [f"# Soak, {stamp} UTC", "",
             f"Command: `benches/load/soak.sh {' '.join(os.sys.argv[1:])}`; load before: `{load_before}`; "
             f"after: `{load_after}`.",
             f"{seconds} s: {json_rate} non-streamed and {stream_rate} streamed requests/s (open loop), "
             f"{args.backends} priced backends on one mock, faults `{args.faults}` on {args.fault_rate:.0%} of "
             f"upstream requests, `first_byte_timeout_ms = {args.first_byte_ms}`.", "",
             "## Memory", "",
             "| | gateway RSS | open fds |", "| --- | --- | --- |",
             f"| start (t = {start[0]:.0f} s) | {start[1] / 1024:.1f} MB | {start[2]} |",
             f"| end | {end_rss / 1024:.1f} MB | {end_fds} |",
             f"| highest sample | {max(s[1] for s in samples) / 1024:.1f} MB | {max(s[2] for s in samples)} |",
             "", f"Growth from start to end: {growth:+.1%} (goal ≤ +10 %). /metrics "
             + ("not scraped." if args.no_scrape else "scraped every 5 s."), "",
             "Every minute: " + ", ".join(f"{t:.0f} s {rss / 1024:.1f} MB" for t, rss, _ in samples[::12]) + ".", "",
             "## What clients saw", "", "| run | sent | by status | errors | p50 | p99 |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        s = c.summary(r)
        sent = sum(int(v) for v in s["codes"].values()) + sum(int(v) for v in s["errors"].values())
        lines.append(f"| {name} | {sent} | {s['codes']} | {s['errors'] or '{}'} | {s['p50_us'] / 1000:.2f} ms | "
                     f"{s['p99_us'] / 1000:.2f} ms |")
    decisions = {k.split('decision="', 1)[1].split('"', 1)[0]: int(v) for k, v in m.items()
                 if k.startswith("nexus_decisions_total{")}
    rejections = {k.split('reconciler="', 1)[1].split('"', 1)[0]: int(v) for k, v in m.items()
                  if k.startswith("nexus_rejections_total{")}
    lines += ["", "## What the gateway counted (`nexus_upstream_requests_total` by status)", "",
              ", ".join(f"{k}: {v}" for k, v in sorted(by_status.items())), "",
              "Decisions (`nexus_decisions_total`): " + ", ".join(f"{k}: {v}" for k, v in sorted(decisions.items()))
              + "; backends excluded in rejections, by stage (`nexus_rejections_total`): "
              + (", ".join(f"{k}: {v}" for k, v in sorted(rejections.items())) or "none") + ".", "",
              f"The mock: {tally['requests']} requests, {tally['answers_with_usage']} answers with usage, "
              f"faults played {tally.get('faults', {})}.", "",
              "## Spend", "",
              "| | input tokens | output tokens | USD |", "| --- | --- | --- | --- |",
              f"| the mock declared | {tally['prompt_tokens']} | {tally['completion_tokens']} | {expected:.4f} |",
              f"| the gateway settled | {tokens_in:.0f} | {tokens_out:.0f} | {spend_metric:.4f} |",
              ""]
    if settled_budget is not None:
        lines.append(f"| the budget ledger (limit less `nexus_budget_remaining_usd`) | | | {settled_budget:.4f} |")
    cents = lambda usd: round(usd * 100)
    metric_equal = cents(expected) == cents(spend_metric)
    ledger_equal = settled_budget is not None and cents(expected) == cents(settled_budget)
    lines += ["", f"Equal to the cent: metrics {'yes' if metric_equal else 'NO'} "
                  f"(difference {spend_metric - expected:+.6f} USD), budget ledger "
                  f"{'yes' if ledger_equal else 'NO'}"
                  + (f" (difference {settled_budget - expected:+.6f} USD)." if settled_budget is not None else "."), ""]
    c.write_report(args.out, lines)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
