#!/usr/bin/env python3
"""Writes a gateway config of N backends that all serve `mock-model` from one mock upstream.

Half the fleet is local and free, half cloud and priced (so that the budget stage reserves
and settles), priorities vary, and a monthly budget is set: the shape of
`nexus_benches::fleet_config`, pointed at a real server.

    fleet.py --backends 100 --upstream http://127.0.0.1:9101 > fleet.toml
"""
import argparse
import sys


def fleet(backends, upstream, max_concurrency, price, health_secs, first_byte_ms, cloud_share):
    out = []
    for i in range(backends):
        cloud = int((i + 1) * cloud_share) > int(i * cloud_share)
        zone, cost = ("cloud", price) if cloud else ("local", 0.0)
        out.append(
            f'[[backends]]\nid = "b{i}"\nurl = "{upstream}"\nzone = "{zone}"\n'
            f"priority = {1 + i % 3}\ntier = 3\nmax_concurrency = {max_concurrency}\n"
            f'  [[backends.models]]\n  name = "mock-model"\n  context_window = 8192\n'
            f"  input_usd_per_mtok = {cost}\n  output_usd_per_mtok = {cost}\n"
        )
    out.append(
        "[routing.budget]\nmonthly_limit_usd = 1000000.0\n\n"
        f"[health]\ninterval_secs = {health_secs}\n\n"
        f"[server]\nmax_queued = 20000\nfirst_byte_timeout_ms = {first_byte_ms}\n"
    )
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backends", type=int, default=100)
    p.add_argument("--upstream", required=True, help="the mock's URL, e.g. http://127.0.0.1:9101")
    p.add_argument("--max-concurrency", type=int, default=200, help="per backend")
    p.add_argument("--price", type=float, default=0.9, help="USD per million tokens, cloud backends")
    p.add_argument("--cloud-share", type=float, default=0.5, help="share of backends that are cloud, spread evenly")
    p.add_argument("--health-secs", type=int, default=10)
    p.add_argument("--first-byte-ms", type=int, default=120000)
    a = p.parse_args()
    if a.backends < 1:
        sys.exit("fleet.py: --backends must be at least 1")
    sys.stdout.write(
        fleet(a.backends, a.upstream, a.max_concurrency, a.price, a.health_secs, a.first_byte_ms, a.cloud_share)
    )


if __name__ == "__main__":
    main()
