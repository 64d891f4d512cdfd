"""`lpr-gateway` command line: run, check, demo, simulate, decode, outbox."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import importlib
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from gateway import __version__
from gateway.config import Config, config_warnings, load_config
from gateway.errors import ConfigError, GatewayError, StartupError
from gateway.limits import raise_open_file_limit

if TYPE_CHECKING:
    from gateway.outbox import Outbox

log = logging.getLogger("gateway")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    # simulate/decode own their arguments: hand them over untouched.
    if args_list and args_list[0] == "simulate":
        return _delegate_simulate(args_list[1:])
    if args_list and args_list[0] == "decode":
        return _delegate("gateway.decode", args_list[1:])

    parser = argparse.ArgumentParser(
        prog="lpr-gateway",
        description="Licence-plate reads from LPR cameras (TCP, HTTP, RTSP) to MQTT.",
    )
    parser.add_argument("--version", action="version", version=f"lpr-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the gateway")
    run.add_argument("-c", "--config", required=True, type=Path)
    run.add_argument("--log-level", default=None, help="overrides log_level of the config")
    check = commands.add_parser(
        "check",
        help="validate a config file (several: the shards of one site, also checked"
        " together); exit 0 or 2",
    )
    check.add_argument("-c", "--config", required=True, type=Path, action="append")
    demo = commands.add_parser(
        "demo", help="embedded broker + gateway + simulated cameras; prints each event"
    )
    demo.add_argument("--rate", type=float, default=0.5, help="reads per second per camera")
    demo.add_argument("--seconds", type=float, default=0, help="stop after this long (0: Ctrl-C)")
    demo.add_argument("--data-dir", type=Path, default=None, help="outbox folder (default: temp)")
    commands.add_parser("simulate", help="a camera simulator: simulate tcp|http|rtsp --help")
    commands.add_parser(
        "decode",
        help="decode a raw TCP capture, or with --rtsp an RTSP camera's metadata: decode --help",
    )
    outbox = commands.add_parser("outbox", help="inspect the outbox: outbox dead-letters …")
    outbox_commands = outbox.add_subparsers(dest="outbox_command", required=True)
    dead = outbox_commands.add_parser(
        "dead-letters", help="events set aside because the broker or client refused them"
    )
    dead.add_argument("action", choices=("list", "replay", "drop"))
    dead.add_argument("-c", "--config", required=True, type=Path)
    dead.add_argument("--event", action="append", default=[], help="an event id (repeatable)")
    dead.add_argument("--all", action="store_true", help="replay or drop every dead letter")
    dead.add_argument("--json", action="store_true", help="list as JSON lines")
    kept = outbox_commands.add_parser(
        "retained",
        help="the retained copy re-sent to a broker that lost it, and what the next start"
        " clears (what the config no longer makes)",
    )
    kept.add_argument("action", choices=("list",))
    kept.add_argument("-c", "--config", required=True, type=Path)
    kept.add_argument("--json", action="store_true", help="list as JSON lines")
    history = commands.add_parser("history", help="search the read history: history search --help")
    history_commands = history.add_subparsers(dest="history_command", required=True)
    search = history_commands.add_parser("search", help="reads newest first, as text or CSV")
    search.add_argument("-c", "--config", required=True, type=Path)
    search.add_argument("--plate", help="a fragment of the plate (spaces and dashes ignored)")
    search.add_argument("--fuzzy", action="store_true", help="the fragment within one edit")
    search.add_argument("--camera")
    search.add_argument("--known", help="a known-plates name")
    search.add_argument("--since", help="ISO time, e.g. 2026-12-01 or 2026-12-01T08:00Z")
    search.add_argument("--until", help="ISO time (exclusive)")
    search.add_argument("--limit", type=int, default=50)
    search.add_argument("--csv", action="store_true", help="every match as CSV")
    args = parser.parse_args(args_list)

    if args.command == "check":
        return _check(args.config)
    if args.command == "run":
        return _run(args.config, args.log_level)
    if args.command == "outbox":
        if args.outbox_command == "retained":
            return _retained(args)
        return _dead_letters(args)
    if args.command == "history":
        return _history_search(args)
    if args.command == "demo":
        from gateway.demo import run_demo

        _setup_logging("INFO")
        with contextlib.suppress(KeyboardInterrupt):
            return asyncio.run(run_demo(args.rate, args.seconds, args.data_dir))
        return EXIT_OK
    parser.error(f"unknown command {args.command}")
    return EXIT_FAILURE


def _check(paths: list[Path]) -> int:
    configs: dict[Path, Config] = {}
    for path in paths:
        config = _load(path)
        if config is None:
            continue
        for warning in config_warnings(config):
            print(f"  warning: {warning}", file=sys.stderr)
        print(f"{path}: OK ({len(config.cameras)} cameras)")
        configs[path] = config
    if len(configs) < len(paths):
        return EXIT_CONFIG
    clashes = shard_problems(configs)
    for problem in clashes:
        print(f"shards: {problem}", file=sys.stderr)
    return EXIT_CONFIG if clashes else EXIT_OK


def shard_problems(configs: Mapping[Path, Config]) -> list[str]:
    """What two gateways of one site (each a config) must not share: a camera
    (it would be read and published twice, with two event ids) and an MQTT
    client id (the broker lets one session live per id: the two would take
    it from each other in a loop). Client ids set from the environment or
    derived from the host are not compared: they differ where the gateways
    run, which a check cannot see."""
    problems: list[str] = []
    cameras: dict[str, Path] = {}
    client_ids: dict[str, Path] = {}
    for path, config in configs.items():
        for camera in config.cameras:
            if camera.id in cameras:
                problems.append(
                    f"camera {camera.id!r} is in {cameras[camera.id]} and {path}: a camera"
                    " belongs to exactly one gateway"
                )
            cameras.setdefault(camera.id, path)
        written = _written_client_id(path)
        if written is None:
            continue
        if written in client_ids:
            problems.append(
                f"mqtt.client_id {written!r} is in {client_ids[written]} and {path}: each"
                " gateway needs its own (or leave it out: it is then derived from the host"
                " and the outbox)"
            )
        client_ids.setdefault(written, path)
    return problems


def _written_client_id(path: Path) -> str | None:
    """mqtt.client_id as a literal in the file (None: absent or from ${ENV})."""
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    mqtt_section = document.get("mqtt") if isinstance(document, dict) else None
    value = mqtt_section.get("client_id") if isinstance(mqtt_section, dict) else None
    if value is None or "${" in str(value):
        return None
    return str(value)


def _history_search(args: argparse.Namespace) -> int:
    """The history of a gateway (running or not: the history is read, never written)."""
    from datetime import UTC, datetime

    from gateway.history import HistoryQuery, HistoryStore

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    store = HistoryStore.configured(config.history, config.outbox.path)
    if not store.path.exists():
        print(f"lpr-gateway: no history at {store.path} (history.enabled)", file=sys.stderr)
        return EXIT_CONFIG

    def moment(text: str | None) -> float | None:
        if text is None:
            return None
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()

    try:
        query = HistoryQuery(
            plate=args.plate,
            fuzzy=args.fuzzy,
            camera=args.camera,
            known=args.known,
            since=moment(args.since),
            until=moment(args.until),
        )
    except ValueError as exc:
        print(f"lpr-gateway: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    store.open()
    try:
        if args.csv:
            for chunk in store.export_csv(query):
                sys.stdout.write(chunk)
            return EXIT_OK
        rows = store.search(query, args.limit)
        for row in rows:
            when = datetime.fromtimestamp(row.time, UTC).strftime("%Y-%m-%d %H:%M:%S")
            known = f"  known={row.known}" if row.known else ""
            print(f"{when}Z  {row.camera:<16} {ascii(row.plate)[1:-1]:<12}{known}  {row.id}")
        print(f"{len(rows)} of {store.count(query)} reads", file=sys.stderr)
    finally:
        store.close()
    return EXIT_OK


def _dead_letters(args: argparse.Namespace) -> int:
    """list (any time), replay or drop (gateway stopped: they need the outbox's lock)."""
    import dataclasses
    import json
    import time

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    if args.action != "list" and not args.event and not args.all:
        print(f"lpr-gateway: {args.action} needs --event ID (repeatable) or --all", file=sys.stderr)
        return EXIT_CONFIG
    outbox = _open_outbox(config, exclusive=args.action != "list")
    if outbox is None:
        return EXIT_CONFIG
    try:
        event_ids = None if args.all else args.event
        if args.action == "replay":
            count = outbox.replay_dead_letters(event_ids)
            print(f"{count} events put back in the outbox; they are published at the next start")
        elif args.action == "drop":
            count = outbox.drop_dead_letters(event_ids)
            print(f"{count} events dropped for good")
        else:
            letters = outbox.dead_letters()
            for letter in letters:
                if args.event and letter.event_id not in args.event:
                    continue
                if args.json:
                    print(json.dumps(dataclasses.asdict(letter), ensure_ascii=False))
                else:
                    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(letter.dead_at))
                    print(
                        f"{letter.event_id}  camera={letter.camera}  {when}  "
                        f"{letter.messages} messages, {letter.bytes} bytes\n"
                        f"    reason: {letter.reason}\n"
                        f"    topics: {', '.join(ascii(t)[1:-1][:120] for t in letter.topics)}"
                    )
            if not args.json:
                print(f"{len(letters)} dead-lettered events in {config.outbox.path}")
    finally:
        outbox.close()
    return EXIT_OK


def _open_outbox(config: Config, exclusive: bool) -> Outbox | None:
    """The config's outbox opened (`exclusive`: with its lock), or None after
    saying on stderr why not."""
    from gateway.outbox import Outbox, OutboxOpenError

    if not config.outbox.path.exists():
        print(f"lpr-gateway: no outbox at {config.outbox.path}", file=sys.stderr)
        return None
    outbox = Outbox(config.outbox.path, config.outbox.max_bytes, config.outbox.sync)
    try:
        outbox.open(exclusive=exclusive)
    except OutboxOpenError as exc:
        print(f"lpr-gateway: {exc}", file=sys.stderr)
        return None
    return outbox


def _retained(args: argparse.Namespace) -> int:
    """The retained copy topic by topic, each with what the next start does to it
    under this config: keep it, or clear it and why. Reads only: any time."""
    import dataclasses
    import json
    import time

    from gateway.runtime_store import RuntimeStore, store_path
    from gateway.topics import retirement_judge

    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    names = set(config.known_plates) | RuntimeStore.names_in(
        store_path(config.outbox.path), time.time()
    )
    stale = retirement_judge(config, names)
    outbox = _open_outbox(config, exclusive=False)
    if outbox is None:
        return EXIT_CONFIG
    try:
        kept, waiting = outbox.kept_topics(), outbox.clears_waiting()
    finally:
        outbox.close()
    to_clear = 0
    for topic in kept:
        reason = stale(topic.topic)
        to_clear += reason is not None
        if args.json:
            print(json.dumps({**dataclasses.asdict(topic), "clear": reason}, ensure_ascii=False))
        else:
            shown = ascii(topic.topic)[1:-1][:120]
            fate = f"  CLEARED at the next start: {reason}" if reason else ""
            print(f"{shown}  {topic.bytes} bytes{fate}")
    if not args.json:
        print(
            f"{len(kept)} retained topics kept in {config.outbox.path}, {to_clear} of them"
            f" cleared at the next start under this config; {waiting} clears waiting for the"
            " broker"
        )
    return EXIT_OK


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(path: Path) -> Config | None:
    """The config, or None once every problem in it is printed (with its key path)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"{path}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _run(path: Path, level_override: str | None) -> int:
    config = _load(path)
    if config is None:
        return EXIT_CONFIG
    _setup_logging((level_override or config.log_level).upper())
    # Said at every start, not only by `check`: a risky setting left in place
    # must stay visible in the logs.
    for warning in config_warnings(config):
        log.warning("config: %s", warning)
    raise_open_file_limit()
    try:
        asyncio.run(serve(config))
    except StartupError as exc:
        # One line: what, where, why and what to do (systemd shows it as is).
        print(f"lpr-gateway: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except GatewayError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    return EXIT_OK


async def serve(config: Config) -> None:
    """Run until SIGTERM/SIGINT, then shut down in order."""
    from gateway.app import Gateway

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    gateway = Gateway(config)
    try:
        await gateway.start()
        # What start-up built (modules, config, metrics) lives as long as the
        # process: out of the collector's reach, full collections stop walking
        # it (measured: one 33-50 ms full collection per ~2,000 events flat
        # out; none in 3,000 events once frozen).
        gc.freeze()
        await stop.wait()
        log.info("signal received, shutting down")
    finally:
        await gateway.stop()


def _delegate(module_name: str, argv: list[str]) -> int:
    module = importlib.import_module(module_name)  # imported late: `run` needs none of them
    _setup_logging("INFO")
    with contextlib.suppress(KeyboardInterrupt):
        return int(module.main(argv))
    return EXIT_OK


def _delegate_simulate(argv: list[str]) -> int:
    protocols = ("tcp", "http", "rtsp")
    if not argv or argv[0] not in protocols:
        print(f"usage: lpr-gateway simulate {{{'|'.join(protocols)}}} [options]", file=sys.stderr)
        return EXIT_CONFIG
    return _delegate(f"gateway.simulate.{argv[0]}", argv[1:])
