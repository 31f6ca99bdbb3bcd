"""The `satellite` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.config import Config, load, parse_listen, parse_upstream_flag
from registry_proxy.progress import on_terminal
from registry_proxy.store import ContentStore
from registry_proxy.units import ConfigError

if TYPE_CHECKING:
    from groundcontrol.contract import StateDocument
    from registry_proxy.routing import Router


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="satellite",
        description="Satellite, an offline-first edge registry for container images.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, metavar="FILE", help="TOML config file")
        p.add_argument(
            "--data-dir",
            type=Path,
            metavar="DIR",
            help="data directory (storage.path, default /var/lib/satellite)",
        )

    run = sub.add_parser("run", help="serve the registry")
    common(run)
    run.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="address to serve on (server.listen, default 0.0.0.0:8585)",
    )
    run.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="an upstream registry to pull through from, added to the config's [[upstream]] "
        "tables (repeat for several; the first is the default unless one is)",
    )
    run.add_argument(
        "--push",
        action="store_true",
        default=None,
        help="accept pushes and deletes (registry.push; the default is read-only: a "
        "pull-through cache and the content Ground Control sends)",
    )
    verify = sub.add_parser("verify", help="rehash every stored blob and check the metadata")
    common(verify)
    register = sub.add_parser(
        "register", help="join the fleet: create the device key and register with Ground Control"
    )
    common(register)
    register.add_argument(
        "--ground-control", metavar="URL", help="Ground Control's URL (else groundcontrol.url)"
    )
    register.add_argument("--token", required=True, help="the one-time join token (gcj_...)")
    register.add_argument(
        "--root-keyid",
        action="append",
        default=[],
        metavar="HEX",
        help="a root keyid the trust root must list (from groundcontrol keys show);"
        " without it the first root is trusted on first use",
    )
    register.add_argument(
        "--force", action="store_true", help="replace an existing identity in the data dir"
    )
    status = sub.add_parser(
        "status", help="identity, state, Ground Control link, outbox and store of this satellite"
    )
    common(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    sync = sub.add_parser("sync", help="ask Ground Control for a newer state")
    common(sync)
    sync.add_argument(
        "--now", action="store_true", help="fetch right away and wait for the verdict (default)"
    )
    sync.add_argument(
        "--no-wait",
        action="store_true",
        help="return with the verdict, without waiting for replication to settle",
    )
    sync.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds to wait for replication to settle (default 3600)",
    )
    gc = sub.add_parser(
        "gc", help="free the cached content that no state needs now (pinned content stays)"
    )
    common(gc)
    gc.add_argument("--dry-run", action="store_true", help="list what would be freed, free nothing")
    gc.add_argument("--json", action="store_true", help="print JSON")
    bundle = sub.add_parser("bundle", help="USB bundles for air-gapped sites").add_subparsers(
        dest="bundle_cmd", required=True, metavar="COMMAND"
    )
    imp = bundle.add_parser(
        "import", help="verify a bundle, copy its images into the store and apply its state"
    )
    common(imp)
    imp.add_argument(
        "path", type=Path, help="the bundle: a directory, a tar, or the first of its split parts"
    )
    reports = sub.add_parser(
        "reports", help="check-ins to carry back to Ground Control"
    ).add_subparsers(dest="reports_cmd", required=True, metavar="COMMAND")
    exp = reports.add_parser(
        "export", help="write the queued signed check-ins and the inventory into a directory"
    )
    common(exp)
    exp.add_argument("directory", type=Path, help="where to write them (a stick's mount point)")
    _runtime_config_parser(sub, common)
    return parser


def _runtime_config_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    from appliance.runtime_config import RUNTIMES

    rc = sub.add_parser(
        "runtime-config",
        help="print, write or undo the mirror config that points a runtime at this satellite",
    )
    common(rc)
    rc.add_argument(
        "runtime", choices=RUNTIMES, help="the container runtime to point at this satellite"
    )
    action = rc.add_mutually_exclusive_group()
    action.add_argument("--apply", action="store_true", help="write the files (with a backup)")
    action.add_argument("--revert", action="store_true", help="restore what --apply replaced")
    rc.add_argument("--root", type=Path, default=Path("/"), help="prefix for every path")
    rc.add_argument(
        "--mirror-url", help="the satellite as the runtimes reach it (default: server.listen)"
    )


def _config(args: argparse.Namespace) -> Config:
    config = load(args.config)
    explicit = set(config.explicit)
    if args.data_dir is not None:
        config = replace(config, data_dir=args.data_dir)
        explicit.add("storage.path")
    if getattr(args, "listen", None):
        parse_listen(args.listen, "--listen")
        config = replace(config, listen=args.listen)
        explicit.add("server.listen")
    if getattr(args, "push", None):
        config = replace(config, push=True)
        explicit.add("registry.push")
    config = replace(config, explicit=frozenset(explicit))
    if getattr(args, "upstream", None):
        flags = tuple(parse_upstream_flag(v) for v in args.upstream)
        if not any(u.default for u in config.upstreams + flags):
            flags = (replace(flags[0], default=True), *flags[1:])
        config = replace(config, upstreams=config.upstreams + flags)
    return config


async def _register(config: Config, args: argparse.Namespace) -> int:
    from appliance.register import RegistrationError, register

    url = args.ground_control or config.groundcontrol_url
    if not url:
        print("satellite: register needs --ground-control URL", file=sys.stderr)
        return 2
    try:
        identity, warnings = await register(
            config.data_dir,
            url,
            args.token,
            root_keyids=[k.lower() for k in args.root_keyid],
            force=args.force,
            ca_file=config.groundcontrol_ca_file,
        )
    except RegistrationError as exc:
        print(f"satellite: {exc}", file=sys.stderr)
        return 1
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"registered as {identity.satellite} with {identity.groundcontrol_url}"
        f" (device key {identity.keyid[:16]}); identity in {config.data_dir}"
    )
    return 0


async def _status(config: Config, args: argparse.Namespace) -> int:
    from appliance.status import read_status, render_status

    data = await read_status(config.data_dir)
    print(json.dumps(data, indent=2, sort_keys=True) if args.json else render_status(data))
    return 0


def _sync(config: Config, args: argparse.Namespace) -> int:
    from appliance.admin import AdminUnavailable, call
    from appliance.status import follow_replication

    try:
        result = call(config.data_dir, "POST", "/sync")
    except AdminUnavailable as exc:
        print(f"satellite: {exc}", file=sys.stderr)
        return 1
    outcome = result.get("outcome")
    print(f"{outcome}: state version {result.get('version')} {result.get('message') or ''}")
    if outcome not in ("accepted", "current"):
        return 1
    if args.no_wait:
        return 0
    try:
        return follow_replication(config.data_dir, timeout=args.timeout)
    except AdminUnavailable as exc:
        print(f"satellite: {exc}", file=sys.stderr)
        return 1


async def _gc(config: Config, args: argparse.Namespace) -> int:
    from appliance.admin import AdminUnavailable, call
    from appliance.register import daemon_running
    from appliance.replicate import collect_garbage

    if daemon_running(config.data_dir):
        path = "/gc?dry_run=1" if args.dry_run else "/gc"
        try:
            result = call(config.data_dir, "POST", path)
        except AdminUnavailable as exc:
            print(f"satellite: {exc}", file=sys.stderr)
            return 1
    else:
        store = ContentStore(config.data_dir)
        await store.open()
        try:
            result = await collect_garbage(store, dry_run=args.dry_run)
        finally:
            await store.close()
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        verb = "would free" if args.dry_run else "freed"
        print(
            f"{verb} {result['blobs']} blob(s), {result['bytes']} bytes;"
            f" {result['pinned']} pinned by the state kept"
        )
    return 0


async def _verify(config: Config) -> int:
    store = ContentStore(config.data_dir)
    await store.open()
    try:
        bad = await store.verify()
    finally:
        await store.close()
    for digest in bad:
        print(f"CORRUPT {digest}", file=sys.stderr)
    print(f"verified {config.data_dir}: {len(bad)} corrupt blob(s)")
    return 1 if bad else 0


def _bundle_import(config: Config, args: argparse.Namespace) -> int:
    from appliance.admin import AdminBrokenOff, AdminUnavailable, call, call_with_progress
    from appliance.bundle import import_offline
    from appliance.daemon import storage_router

    path = args.path.resolve()
    progress = on_terminal("import")
    broken: AdminBrokenOff | None = None
    try:
        try:
            if progress is None:
                result = call(config.data_dir, "POST", "/bundle", {"path": str(path)}, timeout=None)
            else:  # the running daemon's progress, drawn here
                result = call_with_progress(
                    config.data_dir, "/bundle", {"path": str(path)}, progress.follow
                )
        except AdminUnavailable:

            def router_for(doc: StateDocument) -> Router:
                return storage_router(config, doc)

            result = asyncio.run(import_offline(config.data_dir, path, router_for, progress))
    except AdminBrokenOff as exc:
        broken = exc
    finally:
        if progress is not None:
            progress.close()  # the bar's line ends before anything else is printed
    if broken is not None:
        print(f"satellite: {broken}; the daemon's log tells how the import ended", file=sys.stderr)
        return 1
    outcome = result.get("outcome")
    if result.get("warning"):
        print(f"satellite: warning: {result['warning']}", file=sys.stderr)
    if outcome in ("applied", "current"):
        print(
            f"{outcome}: state version {result['state_version']}; {result['blobs_imported']}"
            f" blob(s) imported ({result['bytes_imported']} bytes), {result['blobs_present']}"
            f" already present; {result['referrers']} referrer(s);"
            f" {result['acked']} check-in(s) acknowledged"
        )
        return 0
    if outcome == "incomplete":
        print(f"satellite: {result['message']}:", file=sys.stderr)
        for missing in result["missing"][:50]:
            print(f"  missing {missing}", file=sys.stderr)
        return 3
    print(f"satellite: bundle refused: {result.get('message')}", file=sys.stderr)
    return 1


def _reports_export(config: Config, args: argparse.Namespace) -> int:
    from appliance.bundle import reports_offline
    from appliance.identity import IdentityError

    try:
        result = asyncio.run(reports_offline(config.data_dir, args.directory))
    except (IdentityError, OSError) as exc:
        print(f"satellite: {exc}", file=sys.stderr)
        return 1
    print(
        f"wrote {result['checkins']} check-in(s) and an inventory of {result['blobs']} blob(s)"
        f" to {args.directory / result['satellite']}"
    )
    return 0


def _runtime_config(args: argparse.Namespace, config: Config) -> int:
    from appliance import runtime_config as rc

    try:
        if args.revert:
            restored = rc.revert(args.root, args.runtime)
            for path in restored:
                print(f"restored {path}")
            if not restored:
                print(f"nothing to revert: no {args.runtime} config applied under {args.root}")
            return 0
        mirror_url = args.mirror_url or rc.default_mirror_url(*config.host_port)
        result = rc.render(args.runtime, mirror_url, config.upstreams, rc.reader(args.root))
        if not args.apply:
            print(rc.describe(result), end="")
            return 0
        for path in rc.apply(args.root, result):
            print(f"wrote {path}")
        for note in result.notes:
            print(f"note: {note}")
        return 0
    except rc.RuntimeConfigError as exc:
        print(f"satellite: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"satellite: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
    except ConfigError as exc:
        print(f"satellite: bad configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    if args.command == "run":
        from appliance import workers

        if config.worker_count > 1:
            return workers.run(config)
        return asyncio.run(workers.serve(config))
    if args.command == "verify":
        return asyncio.run(_verify(config))
    if args.command == "register":
        return asyncio.run(_register(config, args))
    if args.command == "status":
        return asyncio.run(_status(config, args))
    if args.command == "sync":
        return _sync(config, args)
    if args.command == "gc":
        return asyncio.run(_gc(config, args))
    if args.command == "bundle":
        return _bundle_import(config, args)
    if args.command == "reports":
        return _reports_export(config, args)
    if args.command == "runtime-config":
        return _runtime_config(args, config)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
