"""Runtime writes with many gateways: `PATCH …/weights` round trip at N gateways.

A write reads back only the gateway it touches (the periodic sync reads everything), so its
cost should grow slowly with the number of gateways. Each gateway: 2 routes × 1 unreachable
127.0.0.1 instance (no traffic: this measures the control path).
Run: `.venv/bin/python -m bench.patch_at_scale [--sizes 10,100,1000] [--changes 50]`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import time

from bench.common import controller, log, markdown_table, percentile, short_tmp


def gateways(count: int) -> dict[str, object]:
    return {
        f"g{i:04d}": {
            "bind": f"127.0.0.1:{21000 + i}",
            "routes": {
                "stable": {"weight": "90%", "instances": [f"127.0.0.1:{30000 + i}"]},
                "canary": {"weight": "10%", "instances": [f"127.0.0.1:{40000 + i}"]},
            },
        }
        for i in range(count)
    }


def measure(count: int, changes: int) -> list[float]:
    with (
        short_tmp() as tmp,
        controller(tmp, {"gateways": gateways(count)}, startup_timeout=180.0) as running,
    ):
        conn = http.client.HTTPConnection("127.0.0.1", running.api_port, timeout=60)
        times: list[float] = []
        for i in range(changes):
            canary = 11 + i % 80  # always differs from the previous split of that gateway
            body = json.dumps({"stable": f"{100 - canary}%", "canary": f"{canary}%"})
            started = time.perf_counter()
            path = f"/api/v1/gateways/g{(i * 37) % count:04d}/weights"
            conn.request("PATCH", path, body, {"Content-Type": "application/json"})
            reply = json.loads(conn.getresponse().read())
            times.append((time.perf_counter() - started) * 1000)
            if reply.get("method") != "runtime":
                raise RuntimeError(f"change {i} was not a runtime change: {reply}")
        conn.close()
        return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="10,100,1000")
    parser.add_argument("--changes", type=int, default=50)
    args = parser.parse_args()
    rows = []
    for count in (int(s) for s in args.sizes.split(",")):
        log(f"[{count}] measuring {args.changes} weight changes")
        times = measure(count, args.changes)
        rows.append(
            [
                count,
                args.changes,
                f"{percentile(times, 50):.1f}",
                f"{percentile(times, 99):.1f}",
                f"{max(times):.1f}",
            ]
        )
    print(markdown_table(["gateways", "changes", "p50 ms", "p99 ms", "max ms"], rows))


if __name__ == "__main__":
    main()
