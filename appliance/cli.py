"""The `satellite` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import replace
from pathlib import Path

from appliance.config import Config, ConfigError, load, parse_listen, parse_upstream_flag
from registry_proxy.app import RegistrySettings, create_app
from registry_proxy.deadline import BodyLimits
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
    run.add_argument(
        "--push",
        action="store_true",
        default=None,
        help="accept pushes and deletes (registry.push; the default is read-only: a "
        "pull-through cache and the content Ground Control sends)",
    )
    verify = sub.add_parser("verify", help="rehash every stored blob and check the metadata")
    common(verify)
    return parser


def _config(args: argparse.Namespace) -> Config:
    config = load(args.config)
    if args.data_dir is not None:
        config = replace(config, data_dir=args.data_dir)
    if getattr(args, "listen", None):
        parse_listen(args.listen, "--listen")
        config = replace(config, listen=args.listen)
    if getattr(args, "push", None):
        config = replace(config, push=True)
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
        stale_after=config.stale_after,
        body_limits=BodyLimits(
            min_rate=config.body_min_rate,
            window=config.body_rate_window,
            timeout=config.body_timeout,
        ),
        access_log=config.log_format if config.log_access else None,
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
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
