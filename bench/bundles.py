"""USB bundles beside the standard tools, on the same disk in the same run.

    .venv/bin/python -m bench.bundles [--gib 2] [--images 4] [--workdir DIR]

- export: `groundcontrol bundle export` of a satellite whose state names N images
  (together --gib GiB) from a docker-registry, beside `skopeo copy --all` of the same
  images to an `oci:` directory (goal: export at least as fast, ratio >= 1.0);
- import: `satellite bundle import` of that bundle into a stopped data dir (every digest
  verified while copied), beside `cp -r` of the same bundle on the same disk (goal: at
  least 0.8 x cp's speed);
- delta: one image added to the group; `--since-inventory` from the satellite's own
  `reports export`; the delta bundle's blob bytes over the bytes of the blobs the
  satellite lacks (goal 1.00).

Everything runs on 127.0.0.1 in a temp dir (kept with --workdir).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support.fleet import Fleet, run_satellite_cli
from tests.support.groundcontrol import groundcontrol_env
from tests.support.images import build_big_image
from tests.support.satellite import satellite_command
from tests.support.skopeo import Skopeo
from tests.support.upstream import UpstreamRegistry

GIB = 1024**3


def _timed(args: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=3600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")
    return elapsed


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _sync() -> None:
    os.sync()


def run(work: Path, gib: float, images: int) -> dict[str, Any]:
    layout = work / "images"
    per_image = int(gib * GIB / images)
    refs = [build_big_image(layout, f"big{i}:v1", per_image, seed=f"big{i}") for i in range(images)]
    build_big_image(layout, "extra:v1", 64 * 1024 * 1024, seed="extra")
    skopeo = Skopeo(work / "skopeo", timeout=3600)
    central = UpstreamRegistry(work / "central").start()
    fleet = Fleet(work / "fleet", config=f'[registry]\nurl = "{central.url}"\n').start()
    gc = [sys.executable, "-m", "groundcontrol"]
    gc_local = ["--data-dir", str(fleet.data), "--config", str(work / "fleet" / "gc.toml")]
    try:
        for i in range(images):
            skopeo.copy(f"oci:{layout}:big{i}:v1", f"docker://{central.host}/bench/big{i}:v1")
        skopeo.copy(f"oci:{layout}:extra:v1", f"docker://{central.host}/bench/extra:v1")
        group = [{"reference": f"bench/big{i}:v1"} for i in range(images)]
        fleet.create_group("bench", group)
        token = fleet.create_satellite("bench-1", "bench")
        sat = fleet.satellite("bench-1", push=False)
        fleet.register(sat, token)
        fleet.api("POST", "/api/v1/satellites/bench-1/publish")
        total = sum(r.size + sum(d.size for d in _blobs(r)) for r in refs)

        # export, beside skopeo copy --all of the same images
        bundle = work / "bundle"
        _sync()
        export_s = _timed([*gc, "bundle", "export", "bench-1", "--output", str(bundle), *gc_local],
                          groundcontrol_env())  # fmt: skip
        _sync()
        skopeo_dir = work / "skopeo-oci"
        start = time.perf_counter()
        for i in range(images):
            skopeo.copy(f"docker://{central.host}/bench/big{i}:v1", f"oci:{skopeo_dir}:big{i}",
                        all_images=True)  # fmt: skip
        skopeo_s = time.perf_counter() - start
        _sync()

        # import into a stopped data dir, beside cp -r of the same bundle
        copy = work / "bundle-copy"
        cp_s = _timed(["cp", "-r", str(bundle), str(copy)])
        _sync()
        shutil.rmtree(copy)
        _sync()
        import_s = _timed(
            [*satellite_command(), "bundle", "import", str(bundle), "--data-dir",
             str(sat.data_dir)],
            groundcontrol_env(),
        )  # fmt: skip
        _sync()

        # delta: one more image; the satellite's inventory says what it holds
        reports = work / "reports"
        run_satellite_cli("reports", "export", str(reports), "--data-dir", str(sat.data_dir))
        inventory = json.loads((reports / "bench-1" / "inventory.json").read_bytes())
        fleet.api(
            "PUT", "/api/v1/groups/bench", {"images": [*group, {"reference": "bench/extra:v1"}]}
        )
        delta = work / "delta"
        _timed(
            [*gc, "bundle", "export", "bench-1", "--output", str(delta), "--since-inventory",
             str(reports / "bench-1" / "inventory.json"), *gc_local],
            groundcontrol_env(),
        )  # fmt: skip
        held = set(inventory["blobs"])
        # the new state's closure: what the first bundle held, and what the delta brings
        closure = {
            p.name: p.stat().st_size
            for directory in (bundle, delta)
            for p in (directory / "blobs" / "sha256").iterdir()
        }
        changed = sum(size for name, size in closure.items() if f"sha256:{name}" not in held)
        delta_blob_bytes = _tree_bytes(delta / "blobs")  # manifests are always carried
        return {
            "bytes": total,
            "images": images,
            "export_s": export_s,
            "skopeo_s": skopeo_s,
            "export_vs_skopeo": skopeo_s / export_s,
            "import_s": import_s,
            "cp_s": cp_s,
            "import_vs_cp": cp_s / import_s,
            "delta_blob_bytes": delta_blob_bytes,
            "changed_bytes": changed,
            "delta_ratio": delta_blob_bytes / changed,
            "delta_bundle_bytes": _tree_bytes(delta),
            "loadavg": os.getloadavg(),
        }
    finally:
        fleet.stop()
        central.stop()


def _blobs(ref: Any) -> list[Any]:
    manifest = ref.manifest_json()
    return [_Desc(manifest["config"]), *(_Desc(layer) for layer in manifest["layers"])]


class _Desc:
    def __init__(self, data: dict[str, Any]) -> None:
        self.digest = str(data["digest"])
        self.size = int(data["size"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=2.0, help="total image bytes, in GiB")
    parser.add_argument("--images", type=int, default=4, help="how many images share them")
    parser.add_argument("--workdir", type=Path, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    if args.workdir:
        args.workdir.mkdir(parents=True, exist_ok=True)
        result = run(args.workdir, args.gib, args.images)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-bundles-") as tmp:
            result = run(Path(tmp), args.gib, args.images)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
