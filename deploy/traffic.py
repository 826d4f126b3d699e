"""Steady demo traffic for the compose stack, so that the dashboards have something to show.

It runs in HAProxy's network namespace (docker-compose.yml) and sends GETs to the gateway at
a fixed rate, for a bounded time. Standard library only: the image runs it as a plain script.
"""

from __future__ import annotations

import argparse
import ipaddress
import time
import urllib.error
import urllib.request
from urllib.parse import urlsplit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8080/", help="a loopback URL")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds, then exit")
    args = parser.parse_args()
    host = urlsplit(args.url).hostname or ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback or args.rate <= 0:
        parser.error("--url must be on a loopback IP literal and --rate positive")

    started = time.monotonic()
    sent = failed = 0
    while time.monotonic() < started + args.duration:
        try:
            with urllib.request.urlopen(args.url, timeout=5) as response:
                response.read()
        except (urllib.error.URLError, OSError):  # 5xx answers (HTTPError) included
            failed += 1
        sent += 1
        if sent % 1000 == 0:
            print(f"traffic: {sent} requests sent, {failed} failed", flush=True)
        # a fixed schedule: a slow answer does not lower the rate, it skips the pause
        time.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
    print(f"traffic: done after {args.duration:g} s, {sent} sent, {failed} failed", flush=True)


if __name__ == "__main__":
    main()
