"""The `satellite` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from appliance.config import Config, ConfigError, load, parse_listen, parse_upstream_flag
from registry_proxy.app import RegistrySettings, create_app
from registry_proxy.proxy import Upstream
from registry_proxy.store import ContentStore


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="satellite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="TOML config file")
        p.add_argument("--data-dir", type=Path, help="data directory (storage.path)")

    run = sub.add_parser("run", help="serve the registry")
    common(run)
    run.add_argument("--listen", help="HOST:PORT (server.listen)")
    run.add_argument(
        "--upstream", action="append", default=[], metavar="NAME=URL", help="an upstream"
    )
    verify = sub.add_parser("verify", help="rehash every stored blob and check the metadata")
    common(verify)
    _runtime_config_parser(sub, common)
    return parser


def _runtime_config_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    from appliance.runtime_config import RUNTIMES

    rc = sub.add_parser(
        "runtime-config",
        help="print, write or undo the mirror config that points a runtime at this satellite",
    )
    common(rc)
    rc.add_argument("runtime", choices=RUNTIMES)
    action = rc.add_mutually_exclusive_group()
    action.add_argument("--apply", action="store_true", help="write the files (with a backup)")
    action.add_argument("--revert", action="store_true", help="restore what --apply replaced")
    rc.add_argument("--root", type=Path, default=Path("/"), help="prefix for every path")
    rc.add_argument(
        "--mirror-url", help="the satellite as the runtimes reach it (default: server.listen)"
    )


def _config(args: argparse.Namespace) -> Config:
    config = load(args.config)
    if args.data_dir is not None:
        config = replace(config, data_dir=args.data_dir)
    if getattr(args, "listen", None):
        parse_listen(args.listen, "--listen")
        config = replace(config, listen=args.listen)
    if getattr(args, "upstream", None):
        flags = tuple(parse_upstream_flag(v) for v in args.upstream)
        if not any(u.default for u in config.upstreams + flags):
            flags = (replace(flags[0], default=True), *flags[1:])
        config = replace(config, upstreams=config.upstreams + flags)
    return config


def _upstreams(config: Config) -> dict[str, Upstream]:
    from registry_proxy.upstream import UpstreamClient

    return {
        u.name: Upstream(
            UpstreamClient(
                u.name, u.url, username=u.username, password=u.password, ca_file=u.ca_file
            ),
            default=u.default,
        )
        for u in config.upstreams
    }


async def _run(config: Config) -> int:
    from appliance.server import serve_until_signalled

    store = ContentStore(config.data_dir, max_bytes=config.max_bytes)
    app = create_app(
        store,
        RegistrySettings(push=config.push),
        _upstreams(config),
        tag_timeout=config.tag_timeout,
    )
    host, port = config.host_port
    await serve_until_signalled(app, host, port, zero_copy=config.zero_copy)
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
    if args.command == "run":
        return asyncio.run(_run(config))
    if args.command == "verify":
        return asyncio.run(_verify(config))
    if args.command == "runtime-config":
        return _runtime_config(args, config)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
