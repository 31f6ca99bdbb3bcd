"""The ``groundcontrol`` command: serve, migrate, local admin (tokens, keys), operator CLI.

Local commands open the database and key directory named by the config directly:
``serve``, ``migrate``, ``admin token …``, ``keys …``. Operator commands talk to a running
Ground Control over the same API as everyone else: ``--url``/``GROUNDCONTROL_URL`` and
``--token``/``GROUNDCONTROL_TOKEN``. Errors print ``error: <code>: <message>`` and exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from groundcontrol.config import Config, load_config, parse_database_url, parse_int
from groundcontrol.status import SUMMARIES
from registry_proxy.progress import on_terminal
from registry_proxy.units import ConfigError, parse_listen, parse_size

DEFAULT_URL = "http://127.0.0.1:8080"


class CliError(Exception):
    pass


# --- local commands --------------------------------------------------------------------


def _config(args: argparse.Namespace) -> Config:
    config = load_config(Path(args.config) if args.config else None)
    overrides: dict[str, Any] = {}
    if getattr(args, "listen", None):
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            raise ConfigError(f"--listen: {exc}") from None
        overrides["listen"] = args.listen
    if getattr(args, "database", None):
        try:
            overrides["database"] = parse_database_url(args.database)
        except ValueError as exc:
            raise ConfigError(f"--database: {exc}") from None
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    return config.with_overrides(**overrides).anchored(Path.cwd())


def cmd_serve(args: argparse.Namespace) -> int:
    from groundcontrol.server import serve

    config = _config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("groundcontrol").info(
        "Ground Control listening on %s, database %s", config.listen, _redact(config.database_url)
    )
    asyncio.run(serve(config))
    return 0


def _redact(url: str) -> str:
    head, sep, tail = url.partition("@")
    if sep and ":" in head.split("//", 1)[-1]:
        return head.rsplit(":", 1)[0] + ":***@" + tail
    return url


@contextlib.asynccontextmanager
async def _services(config: Config, init_keys: bool = False) -> AsyncIterator[Any]:
    """Ground Control's services for one command, closed when it is done."""
    from groundcontrol.services import Services

    services = await Services.open(config, init_keys=init_keys)
    try:
        yield services
    finally:
        await services.close()


def cmd_migrate(args: argparse.Namespace) -> int:
    from groundcontrol.db import open_database
    from groundcontrol.db.migrations import migrate

    config = _config(args)

    async def run() -> list[int]:
        db = await open_database(config.database_url)
        try:
            return await migrate(db)
        finally:
            await db.close()

    applied = asyncio.run(run())
    if args.json:
        _print({"applied": applied})
    else:
        print(f"applied migrations: {applied}" if applied else "schema is up to date")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from groundcontrol.api.tokens import token_json
    from groundcontrol.auth import hash_token, new_operator_token

    config = _config(args)

    async def run() -> Any:
        async with _services(config) as services:
            now = int(time.time())
            async with services.store.transaction() as q:
                if args.token_cmd == "create":
                    token_id, token = new_operator_token()
                    await q.insert_api_token(token_id, args.name, hash_token(token), now)
                    return {"id": token_id, "name": args.name, "token": token}
                if args.token_cmd == "revoke":
                    await q.revoke_api_token(args.id, now)
                    return {"revoked": args.id}
                return {"tokens": [token_json(r) for r in await q.list_api_tokens()]}

    result = asyncio.run(run())
    if args.json:
        _print(result)
    elif args.token_cmd == "create":
        print(result["token"])
        print(f"(token id {result['id']}; shown once, stored hashed)", file=sys.stderr)
    elif args.token_cmd == "revoke":
        print(f"revoked token {result['revoked']}")
    else:
        _table(
            [
                (t["id"], t["name"], t["created_at"], t["last_used_at"], t["revoked_at"])
                for t in result["tokens"]
            ],
            ("ID", "NAME", "CREATED", "LAST USED", "REVOKED"),
            args,
            result,
        )
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    from groundcontrol import keys as keymod

    config = _config(args)

    async def run() -> Any:
        async with _services(config) as services:
            now = time.time()
            if args.keys_cmd == "init":
                trusted = await keymod.init_trust(
                    services.store,
                    services.keys,
                    now,
                    root_keys=args.root_keys,
                    root_threshold=args.root_threshold,
                    state_keys=args.state_keys,
                    state_threshold=args.state_threshold,
                )
            elif args.keys_cmd == "rotate":
                trusted = await keymod.rotate(
                    services.store,
                    services.keys,
                    args.role,
                    now,
                    count=args.count,
                    threshold=args.threshold,
                )
            else:
                current = await keymod.current_root(services.store)
                if current is None:
                    raise CliError("no trust root yet: run `groundcontrol keys init`")
                trusted = current
            if args.keys_cmd in ("init", "rotate") and services.artifacts.enabled:
                # the new root chain to the registry too (best effort; `serve` retries)
                stats = await services.artifacts.sync(states=False)
                if stats.pending:
                    print(
                        f"warning: root chain not pushed to the registry: {stats.last_error}",
                        file=sys.stderr,
                    )
            return trusted.root.to_dict()

    _print(asyncio.run(run()))
    return 0


# --- operator commands over the API ----------------------------------------------------


class Api:
    def __init__(self, url: str, token: str | None) -> None:
        if not token:
            raise CliError("an operator token is needed: --token or GROUNDCONTROL_TOKEN")
        self.client = httpx.Client(
            base_url=url.rstrip("/"),
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            trust_env=False,
        )

    def call(self, method: str, path: str, body: Any = None, params: Any = None) -> Any:
        try:
            response = self.client.request(method, f"/api/v1{path}", json=body, params=params)
        except httpx.HTTPError as exc:
            raise CliError(f"cannot reach Ground Control: {exc}") from None
        if response.status_code == 204:
            return None
        try:
            data = response.json()
        except ValueError:
            raise CliError(f"HTTP {response.status_code}: {response.text[:200]}") from None
        if response.status_code >= 400:
            err = data.get("error", {}) if isinstance(data, dict) else {}
            raise CliError(f"{err.get('code', response.status_code)}: {err.get('message', '')}")
        return data


def _api(args: argparse.Namespace) -> Api:
    return Api(
        args.url or os.environ.get("GROUNDCONTROL_URL", DEFAULT_URL),
        args.token or os.environ.get("GROUNDCONTROL_TOKEN"),
    )


def _images(values: Sequence[str]) -> list[dict[str, Any]]:
    """``REF`` or ``REF=os/arch,os/arch``."""
    out = []
    for v in values:
        ref, _, platforms = v.partition("=")
        out.append({"reference": ref, "platforms": [p for p in platforms.split(",") if p]})
    return out


def _pairs(values: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep:
            raise CliError(f"{what} must be KEY=VALUE, got {v!r}")
        out[key] = value
    return out


def _config_values(values: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in _pairs(values, "--config-set").items():
        if key == "upstreams":
            out[key] = json.loads(value)
        else:
            out[key] = _number_or_text(value)
    return out


def _number_or_text(value: str) -> int | str | None:
    """``90`` is sent as a number, ``""`` as null (the default); anything else as text
    for the server to validate (``"15m"``, or ``"²"``, which ``str.isdigit()`` but
    ``int()`` refuses)."""
    if value == "":
        return None
    try:
        return parse_int(value)
    except ValueError:
        return value


def cmd_group(args: argparse.Namespace) -> int:
    api = _api(args)
    if args.group_cmd == "list":
        data = api.call("GET", "/groups")
        _table(
            [
                (g["name"], len(g["images"]), len(g["members"]), g["description"])
                for g in data["groups"]
            ],
            ("GROUP", "IMAGES", "MEMBERS", "DESCRIPTION"),
            args,
            data,
        )
        return 0
    if args.group_cmd == "create":
        body = {"name": args.name, "description": args.description, "images": _images(args.image)}
        _print(api.call("POST", "/groups", body))
    elif args.group_cmd == "set-images":
        _print(api.call("PUT", f"/groups/{args.name}", {"images": _images(args.image)}))
    elif args.group_cmd == "show":
        _print(api.call("GET", f"/groups/{args.name}"))
    elif args.group_cmd == "delete":
        api.call("DELETE", f"/groups/{args.name}")
    return 0


def cmd_satellite(args: argparse.Namespace) -> int:
    api = _api(args)
    cmd = args.satellite_cmd
    if cmd == "list":
        params = {k: v for k, v in (("group", args.group), ("status", args.status)) if v}
        data = api.call("GET", "/satellites", params=params)
        _status_table(data["satellites"], args, data)
    elif cmd == "create":
        body: dict[str, Any] = {
            "name": args.name,
            "groups": args.group,
            "labels": _pairs(args.label, "--label"),
            "config": _config_values(args.config_set),
        }
        data = api.call("POST", "/satellites", body)
        if args.json:
            _print(data)
        else:
            print(data["join_token"]["token"])
            expires = time.gmtime(data["join_token"]["expires_at"])
            print(
                f"(join token for {args.name}; single use, expires "
                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', expires)})",
                file=sys.stderr,
            )
    elif cmd == "update":
        body = {}
        # both replace what the satellite has; an empty value stands for "none"
        if args.group is not None:
            body["groups"] = [g for g in args.group if g]
        if args.label is not None:
            body["labels"] = _pairs([v for v in args.label if v], "--label")
        if args.config_set:
            body["config"] = _config_values(args.config_set)
        _print(api.call("PATCH", f"/satellites/{args.name}", body))
    elif cmd == "show":
        _print(api.call("GET", f"/satellites/{args.name}"))
    elif cmd == "delete":
        api.call("DELETE", f"/satellites/{args.name}")
    elif cmd == "revoke":
        _print(api.call("POST", f"/satellites/{args.name}/revoke"))
    elif cmd == "publish":
        _print(api.call("POST", f"/satellites/{args.name}/publish"))
    elif cmd == "join-token":
        body = {"ttl": args.ttl} if args.ttl else {}
        data = api.call("POST", f"/satellites/{args.name}/join-tokens", body)
        print(data["token"]) if not args.json else _print(data)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    data = _api(args).call("GET", "/status")
    _status_table(data["satellites"], args, data)
    if not args.json:
        print(
            "  ".join(f"{k}={v}" for k, v in sorted(data["counts"].items())) or "no satellites",
            file=sys.stderr,
        )
    return 0


def cmd_credential(args: argparse.Namespace) -> int:
    api = _api(args)
    if args.credential_cmd == "list":
        data = api.call("GET", "/upstream-credentials")
        _table(
            [
                (c["registry"], c["kind"], c["username"], ",".join(c["groups"]) or "*")
                for c in data["credentials"]
            ],
            ("REGISTRY", "KIND", "USERNAME", "GROUPS"),
            args,
            data,
        )
    elif args.credential_cmd == "set":
        password = sys.stdin.readline().rstrip("\n")
        body = {"username": args.username, "password": password, "groups": args.group}
        _print(api.call("PUT", f"/upstream-credentials/{args.registry}", body))
    elif args.credential_cmd == "delete":
        api.call("DELETE", f"/upstream-credentials/{args.registry}")
    return 0


# --- output --------------------------------------------------------------------------------


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def _table(
    rows: Sequence[Sequence[Any]], header: Sequence[str], args: argparse.Namespace, raw: Any
) -> None:
    if args.json:
        _print(raw)
        return
    cells = [list(map(str, header))] + [["—" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _status_table(items: list[dict[str, Any]], args: argparse.Namespace, raw: Any) -> None:
    _table(
        [
            (
                s["name"],
                s["status"],
                s["last_seen"],
                s["applied_version"],
                s["published_version"],
                len(s["failing_images"]),
            )
            for s in items
        ],
        ("SATELLITE", "STATUS", "LAST SEEN", "APPLIED", "PUBLISHED", "FAILING"),
        args,
        raw,
    )


# --- parser ----------------------------------------------------------------------------


DESCRIPTION = (
    "Ground Control, the fleet controller for Satellite appliances. serve, migrate, admin and "
    "keys work on the database and key directory directly; the other commands talk to a "
    "running Ground Control over its API (--url, --token)."
)


def cmd_bundle(args: argparse.Namespace) -> int:
    from groundcontrol.bundle import export_bundle, held_blobs, inventory_path

    config = _config(args)
    inventory: Path | None = None
    if args.since_inventory:
        inventory = Path(args.since_inventory)
    elif args.since_checkins:
        inventory = inventory_path(config, args.satellite)
        if not inventory.exists():
            raise CliError(
                f"no inventory from {args.satellite} yet: run groundcontrol reports import"
                " on the reports it sent, or export a whole bundle"
            )
    tar: int | None = None
    if args.split:
        try:
            tar = parse_size(args.split)
        except ValueError as exc:
            raise CliError(f"--split: {exc}") from None
        if tar < 64 * 1024:
            raise CliError("--split: parts must be at least 64KiB")
    elif args.tar:
        tar = 0
    held = frozenset[str]()
    if inventory is not None:
        held = held_blobs(inventory.read_bytes(), args.satellite, str(inventory))

    progress = on_terminal("export")

    async def run() -> Any:
        async with _services(config, init_keys=False) as services:
            try:
                result = await export_bundle(
                    services,
                    args.satellite,
                    Path(args.output),
                    held=held,
                    tar=tar,
                    progress=progress,
                )
            finally:
                if progress is not None:
                    progress.close()
            return result.to_dict()

    result = asyncio.run(run())
    if args.json:
        _print(result)
    else:
        print(
            f"bundle for {result['satellite']} (state version {result['state_version']}):"
            f" {result['images']} image(s), {result['referrers']} referrer(s),"
            f" {result['blobs_written']} blob(s) written"
            f" ({result['bytes_written']} bytes), {result['blobs_present']} already there,"
            f" {result['blobs_skipped']} held by the satellite; in {args.output}"
        )
    return 0


def cmd_reports(args: argparse.Namespace) -> int:
    from groundcontrol.bundle import import_reports

    config = _config(args)

    async def run() -> Any:
        async with _services(config, init_keys=False) as services:
            result = await import_reports(services, Path(args.directory), time.time())
            return result.satellites

    result = asyncio.run(run())
    if args.json:
        _print(result)
    else:
        for name, entry in result.items():
            print(
                f"{name}: {len(entry.get('accepted', []))} check-in(s) new,"
                f" {len(entry.get('duplicates', []))} already ingested,"
                f" {len(entry.get('rejected', []))} rejected;"
                f" inventory of {entry.get('inventory_blobs', 'no')} blob(s)"
            )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="groundcontrol", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def json_flag(p: argparse.ArgumentParser, what: str = "print JSON instead of a table") -> None:
        p.add_argument("--json", action="store_true", help=what)

    def local(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", metavar="FILE", help="TOML config file")
        p.add_argument(
            "--database",
            metavar="URL",
            help="sqlite:///PATH (relative to the working directory; sqlite:////PATH is "
            "absolute) or postgresql://USER@HOST/DB; default sqlite:///DATA_DIR/gc.db",
        )
        p.add_argument(
            "--data-dir",
            metavar="DIR",
            help="data directory: signing keys, and the default SQLite database "
            "(default /var/lib/groundcontrol)",
        )

    def remote(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", help=f"Ground Control URL (GROUNDCONTROL_URL, {DEFAULT_URL})")
        p.add_argument("--token", help="operator API token (GROUNDCONTROL_TOKEN)")

    def name_arg(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("name", help=f"the {what}'s name")

    p = sub.add_parser("serve", help="run the API server and the dashboard")
    local(p)
    p.add_argument(
        "--listen", metavar="HOST:PORT", help="address to serve on (default 0.0.0.0:8080)"
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="apply database migrations")
    local(p)
    json_flag(p, "print the applied migrations as JSON")
    p.set_defaults(func=cmd_migrate)

    admin = sub.add_parser("admin", help="local administration").add_subparsers(
        dest="admin_cmd", required=True, metavar="COMMAND"
    )
    tok = admin.add_parser("token", help="operator API tokens").add_subparsers(
        dest="token_cmd", required=True, metavar="COMMAND"
    )
    p = tok.add_parser("create", help="create a token (printed once)")
    local(p)
    json_flag(p, "print the token's id, name and secret as JSON")
    p.add_argument("name", help="who or what the token is for")
    p.set_defaults(func=cmd_token)
    p = tok.add_parser("list", help="list tokens (never their secrets)")
    local(p)
    json_flag(p)
    p.set_defaults(func=cmd_token)
    p = tok.add_parser("revoke", help="revoke a token (and end its dashboard sessions)")
    local(p)
    json_flag(p, "print the result as JSON")
    p.add_argument("id", help="the token id (see: admin token list)")
    p.set_defaults(func=cmd_token)

    keys = sub.add_parser(
        "keys", help="signing keys and the trust root (printed as JSON)"
    ).add_subparsers(dest="keys_cmd", required=True, metavar="COMMAND")
    p = keys.add_parser("init", help="create root version 1 (no-op when one exists)")
    local(p)
    for role in ("root", "state"):
        p.add_argument(
            f"--{role}-keys", type=int, default=1, metavar="N", help=f"{role} keys (default 1)"
        )
        p.add_argument(
            f"--{role}-threshold",
            type=int,
            default=1,
            metavar="T",
            help=f"{role} signatures required (default 1)",
        )
    p.set_defaults(func=cmd_keys)
    p = keys.add_parser("rotate", help="publish root N+1 with fresh root or state keys")
    local(p)
    p.add_argument("role", choices=["root", "state"], help="which keys to replace")
    p.add_argument("--count", type=int, metavar="N", help="new keys (default: as many as now)")
    p.add_argument(
        "--threshold", type=int, metavar="T", help="signatures required (default: as now)"
    )
    p.set_defaults(func=cmd_keys)
    p = keys.add_parser("show", help="print the current trust root")
    local(p)
    p.set_defaults(func=cmd_keys)

    group = sub.add_parser("group", help="groups of satellites and their images").add_subparsers(
        dest="group_cmd", required=True, metavar="COMMAND"
    )
    image_help = "an image every member holds: REF or REF=os/arch,os/arch (repeat for several)"
    p = group.add_parser("list", help="list groups")
    remote(p)
    json_flag(p)
    p = group.add_parser("show", help="print a group as JSON")
    remote(p)
    name_arg(p, "group")
    p = group.add_parser("create", help="create a group (its images must resolve)")
    remote(p)
    name_arg(p, "group")
    p.add_argument("--image", action="append", default=[], metavar="REF", help=image_help)
    p.add_argument("--description", default="", help="free text")
    p = group.add_parser("set-images", help="replace a group's images and publish to its members")
    remote(p)
    name_arg(p, "group")
    p.add_argument("--image", action="append", default=[], metavar="REF", help=image_help)
    p = group.add_parser("delete", help="delete a group that has no members")
    remote(p)
    name_arg(p, "group")
    for action in group.choices.values():
        action.set_defaults(func=cmd_group)

    sat = sub.add_parser("satellite", help="satellites and join tokens").add_subparsers(
        dest="satellite_cmd", required=True, metavar="COMMAND"
    )
    config_help = (
        "KEY=VALUE, repeat for several (state_interval, checkin_interval, cache_max_bytes, "
        "bandwidth_bytes_per_second, upstreams as JSON; an empty VALUE resets to the default)"
    )
    p = sat.add_parser("list", help="list satellites with their status")
    remote(p)
    json_flag(p)
    p.add_argument("--group", help="only the members of this group")
    p.add_argument("--status", choices=SUMMARIES, help="only satellites with this status")
    p = sat.add_parser("show", help="print a satellite as JSON")
    remote(p)
    name_arg(p, "satellite")
    p = sat.add_parser("create", help="create a satellite and print its join token")
    remote(p)
    json_flag(p, "print the satellite and its join token as JSON")
    name_arg(p, "satellite")
    p.add_argument(
        "--group", action="append", default=[], help="a group it belongs to (repeat for several)"
    )
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label")
    p.add_argument(
        "--config-set", action="append", default=[], metavar="KEY=VALUE", help=config_help
    )
    p = sat.add_parser(
        "update",
        help="change a satellite: --group and --label replace the current groups or labels, "
        "--config-set changes the keys given",
    )
    remote(p)
    name_arg(p, "satellite")
    p.add_argument(
        "--group",
        action="append",
        metavar="GROUP",
        help="replaces the satellite's groups with the ones given (repeat for several); "
        "--group '' leaves it in no group",
    )
    p.add_argument(
        "--label",
        action="append",
        metavar="KEY=VALUE",
        help="replaces the satellite's labels with the ones given (repeat for several); "
        "--label '' removes them all",
    )
    p.add_argument(
        "--config-set", action="append", default=[], metavar="KEY=VALUE", help=config_help
    )
    for name, what in (
        ("delete", "delete a satellite"),
        ("revoke", "revoke a satellite's credential (it gets nothing further)"),
        ("publish", "re-resolve and re-sign a satellite's state"),
    ):
        p = sat.add_parser(name, help=what)
        remote(p)
        name_arg(p, "satellite")
    p = sat.add_parser("join-token", help="issue a new one-time join token")
    remote(p)
    json_flag(p, "print the token and its expiry as JSON")
    name_arg(p, "satellite")
    p.add_argument("--ttl", type=int, metavar="SECONDS", help="lifetime (default [join] token_ttl)")
    for action in sat.choices.values():
        action.set_defaults(func=cmd_satellite)

    p = sub.add_parser("status", help="the fleet's status table")
    remote(p)
    json_flag(p)
    p.set_defaults(func=cmd_status)

    cred = sub.add_parser("credential", help="upstream registry credentials").add_subparsers(
        dest="credential_cmd", required=True, metavar="COMMAND"
    )
    p = cred.add_parser("list", help="list credentials (never their passwords)")
    remote(p)
    json_flag(p)
    p = cred.add_parser("set", help="set a registry's credential; the password is read from stdin")
    remote(p)
    p.add_argument("registry", help="registry host[:port]")
    p.add_argument("--username", required=True, help="user name at the registry")
    p.add_argument(
        "--group",
        action="append",
        default=[],
        help="only for members of this group (repeat for several; default: every satellite)",
    )
    p = cred.add_parser("delete", help="remove a registry's credential")
    remote(p)
    p.add_argument("registry", help="registry host[:port]")
    for action in cred.choices.values():
        action.set_defaults(func=cmd_credential)

    bundle = sub.add_parser("bundle", help="USB bundles for air-gapped satellites").add_subparsers(
        dest="bundle_cmd", required=True, metavar="COMMAND"
    )
    p = bundle.add_parser(
        "export", help="write a satellite's signed state and its images as an OCI layout"
    )
    local(p)
    p.add_argument("satellite", help="the satellite's name")
    p.add_argument("--output", required=True, metavar="PATH", help="the bundle directory")
    since = p.add_mutually_exclusive_group()
    since.add_argument(
        "--since-checkins",
        action="store_true",
        help="leave out the blobs the satellite reported holding on its last reports stick",
    )
    since.add_argument(
        "--since-inventory",
        metavar="FILE",
        help="leave out the blobs listed in this inventory file",
    )
    p.add_argument(
        "--tar",
        action="store_true",
        help="write one tar file at PATH (streamed, no temporary copy) instead of a directory",
    )
    p.add_argument(
        "--split",
        metavar="SIZE",
        help="write the tar in parts PATH.000, PATH.001 ... of at most SIZE each (4GiB for"
        " FAT32 sticks); implies --tar",
    )
    json_flag(p, "print the export's counts as JSON")
    p.set_defaults(func=cmd_bundle)

    reports = sub.add_parser(
        "reports", help="check-ins carried back from air-gapped satellites"
    ).add_subparsers(dest="reports_cmd", required=True, metavar="COMMAND")
    p = reports.add_parser("import", help="ingest check-ins and inventories from a directory")
    local(p)
    p.add_argument("directory", help="the reports directory written by satellite reports export")
    json_flag(p, "print the ingest's result as JSON")
    p.set_defaults(func=cmd_reports)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as exc:
        print(f"error: config: {exc}", file=sys.stderr)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from groundcontrol.errors import GroundControlError

        if not isinstance(exc, GroundControlError):
            raise
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
    return 1
