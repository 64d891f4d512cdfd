"""`python -m bench [scenario ...]`: run benchmark scenarios, print one table.

Each scenario is bounded (event count, not open-ended). The raw paho loop is
measured in the same run and every other figure is also shown as a ratio of
it. Results go to bench/results-<time>.json too; `--compare old.json` prints
the change per scenario.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import http, mixed, outage, rtsp, spine, tcp
from bench.common import ALL_CORES_PCT, Result
from gateway.broker import MosquittoProcess

Scenario = Callable[[MosquittoProcess, argparse.Namespace], Result]


def _scenarios() -> dict[str, Scenario]:
    table: dict[str, Scenario] = {
        "raw": lambda b, a: spine.raw_loop(b.host, b.port, a.events),
        "pipeline": lambda b, a: spine.pipeline(b.url, b.host, b.port, a.events),
        "pipeline-100": lambda b, a: spine.pipeline(
            b.url, b.host, b.port, min(a.events, 1000), rate=100
        ),
        "pipeline-history": lambda b, a: spine.pipeline(
            b.url, b.host, b.port, a.events, history=True
        ),
        "pipeline-history-100": lambda b, a: spine.pipeline(
            b.url, b.host, b.port, min(a.events, 1000), rate=100, history=True
        ),
        "pipeline-ui-100": lambda b, a: spine.pipeline(
            b.url, b.host, b.port, min(a.events, 1000), rate=100, ui=True
        ),
    }
    for module in (tcp, http, rtsp, mixed, outage):
        table.update(module.SCENARIOS)
    return table


def main(argv: list[str] | None = None) -> int:
    scenarios = _scenarios()
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", help=f"scenarios (default all): {', '.join(scenarios)}")
    parser.add_argument("--events", type=int, default=2000, help="events per flat-out scenario")
    parser.add_argument(
        "--seconds",
        type=float,
        default=None,
        help="bound of the rate-driven scenarios (rtsp, mixed: seconds of reads, default 15; "
        "outage: the outage, default 30)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write results here")
    parser.add_argument("--compare", type=Path, default=None, help="earlier results JSON")
    args = parser.parse_args(argv)
    names = args.names or list(scenarios)
    unknown = [n for n in names if n not in scenarios]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    if "raw" not in names:
        names.insert(0, "raw")  # every run carries its own baseline

    results: list[Result] = []
    broker = MosquittoProcess()
    broker.start()
    try:
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results.append(scenarios[name](broker, args))
    finally:
        broker.close()
    baseline = next(r for r in results if r.scenario.startswith("raw paho loop"))
    for r in results:
        r.baseline_events_per_s = baseline.events_per_s
        r.ratio = (
            round(r.events_per_s / baseline.events_per_s, 2) if baseline.events_per_s else None
        )
    print_table(results)
    path = args.json or Path(__file__).parent / f"results-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps([r.as_dict() for r in results], indent=2))
    print(f"\nresults written to {path}")
    if args.compare:
        compare(results, json.loads(args.compare.read_text()))
    return 0


def print_table(results: list[Result]) -> None:
    header = (
        "| scenario | events | events/s | p50 ms | p99 ms | gateway CPU % | CPU ms/event "
        f"| peak RSS MB | raw loop events/s | ratio | machine CPU % (of {ALL_CORES_PCT}) |"
    )
    print(header)
    print("|---" * 11 + "|")
    for r in results:
        cells = [
            r.scenario,
            r.events,
            r.events_per_s,
            r.p50_ms,
            r.p99_ms,
            r.gateway_cpu_pct,
            r.cpu_ms_per_event,
            r.peak_rss_mb,
            r.baseline_events_per_s,
            r.ratio,
            r.machine_cpu_pct,
        ]
        print("| " + " | ".join("–" if c is None else str(c) for c in cells) + " |")


def compare(results: list[Result], old: list[dict[str, object]]) -> None:
    before = {str(o["scenario"]): o for o in old}
    print("\nchange against the earlier run (ratio to each run's own raw loop):")
    for r in results:
        o = before.get(r.scenario)
        if o is None or o.get("ratio") in (None, 0) or r.ratio is None:
            print(f"  {r.scenario}: no earlier figure")
            continue
        change = (r.ratio / float(o["ratio"]) - 1) * 100  # type: ignore[arg-type]
        print(f"  {r.scenario}: ratio {o['ratio']} -> {r.ratio} ({change:+.0f}%)")


if __name__ == "__main__":
    sys.exit(main())
