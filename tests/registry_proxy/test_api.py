"""The distribution-spec v1.1 surface, end-1 … end-13, in-process."""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from registry_proxy.store import ContentStore
from tests.registry_proxy.conftest import image_manifest, push_blob, push_image, sha256

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


async def test_base_endpoint(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"


async def test_monolithic_push_then_pull_and_head(client: httpx.AsyncClient) -> None:
    data = b"hello blob" * 100
    digest = await push_blob(client, "a/b", data)
    r = await client.get(f"/v2/a/b/blobs/{digest}")
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["docker-content-digest"] == digest
    h = await client.head(f"/v2/a/b/blobs/{digest}")
    assert h.status_code == 200
    assert h.headers["content-length"] == str(len(data))
    assert h.content == b""
    # a blob is visible only in the repository it was pushed to
    other = await client.get(f"/v2/other/blobs/{digest}")
    assert other.status_code == 404
    assert other.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


async def test_sha512_blob(client: httpx.AsyncClient) -> None:
    data = b"sha512 content"
    digest = "sha512:" + hashlib.sha512(data).hexdigest()
    r = await client.post(f"/v2/r/blobs/uploads/?digest={digest}", content=data)
    assert r.status_code == 201
    assert (await client.get(f"/v2/r/blobs/{digest}")).content == data


async def test_chunked_upload_with_status_and_out_of_order_chunk(
    client: httpx.AsyncClient,
) -> None:
    data = bytes(range(256)) * 40  # 10240 bytes
    r = await client.post("/v2/repo/blobs/uploads/")
    assert r.status_code == 202
    location = r.headers["location"]
    assert r.headers["range"] == "0-0"
    r = await client.patch(
        location,
        content=data[:4000],
        headers={"content-range": "0-3999", "content-type": "application/octet-stream"},
    )
    assert r.status_code == 202
    assert r.headers["range"] == "0-3999"
    # a chunk that does not start where the upload is → 416, nothing appended
    bad = await client.patch(
        location, content=data[5000:6000], headers={"content-range": "5000-5999"}
    )
    assert bad.status_code == 416
    assert bad.headers["range"] == "0-3999"
    status = await client.get(location)
    assert status.status_code == 204
    assert status.headers["range"] == "0-3999"
    r = await client.patch(
        location, content=data[4000:8000], headers={"content-range": "4000-7999"}
    )
    assert r.status_code == 202
    # final chunk travels with the PUT
    r = await client.put(
        f"{location}?digest={sha256(data)}",
        content=data[8000:],
        headers={"content-range": f"8000-{len(data) - 1}"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/repo/blobs/{sha256(data)}"
    assert (await client.get(f"/v2/repo/blobs/{sha256(data)}")).content == data
    # the session is gone once completed
    assert (await client.get(location)).status_code == 404


async def test_streamed_upload_without_content_range(client: httpx.AsyncClient) -> None:
    data = b"z" * 3_000_000  # crosses the 1 MiB write buffer

    async def body():  # type: ignore[no-untyped-def]
        for i in range(0, len(data), 100_000):
            yield data[i : i + 100_000]

    location = (await client.post("/v2/repo/blobs/uploads/")).headers["location"]
    r = await client.patch(location, content=body())
    assert r.status_code == 202
    assert r.headers["range"] == f"0-{len(data) - 1}"
    r = await client.put(f"{location}?digest={sha256(data)}")
    assert r.status_code == 201


async def test_upload_put_with_wrong_digest_commits_nothing(
    client: httpx.AsyncClient, store: ContentStore
) -> None:
    data = b"actual bytes"
    wrong = sha256(b"other bytes")
    location = (await client.post("/v2/repo/blobs/uploads/")).headers["location"]
    r = await client.put(f"{location}?digest={wrong}", content=data)
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "DIGEST_INVALID"
    assert (await client.head(f"/v2/repo/blobs/{wrong}")).status_code == 404
    assert (await client.head(f"/v2/repo/blobs/{sha256(data)}")).status_code == 404
    assert store.layout.iter_blobs() == []
    # the monolithic form refuses it too
    r = await client.post(f"/v2/repo/blobs/uploads/?digest={wrong}", content=data)
    assert r.status_code == 400
    assert list(store.layout.uploads.iterdir()) == []


async def test_cancel_upload(client: httpx.AsyncClient) -> None:
    location = (await client.post("/v2/repo/blobs/uploads/")).headers["location"]
    assert (await client.delete(location)).status_code == 204
    r = await client.get(location)
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "BLOB_UPLOAD_UNKNOWN"


async def test_cross_repo_mount(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "src/repo", b"mount me")
    r = await client.post(f"/v2/dst/repo/blobs/uploads/?mount={digest}&from=src/repo")
    assert r.status_code == 201
    assert r.headers["location"] == f"/v2/dst/repo/blobs/{digest}"
    assert (await client.get(f"/v2/dst/repo/blobs/{digest}")).content == b"mount me"
    # mount of an unknown blob falls back to a new upload session
    unknown = sha256(b"never pushed")
    r = await client.post(f"/v2/dst/repo/blobs/uploads/?mount={unknown}&from=src/repo")
    assert r.status_code == 202
    assert "/blobs/uploads/" in r.headers["location"]


async def test_ranges(client: httpx.AsyncClient) -> None:
    data = bytes(range(256)) * 4
    digest = await push_blob(client, "r", data)
    url = f"/v2/r/blobs/{digest}"
    r = await client.get(url, headers={"range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.content == data[10:20]
    assert r.headers["content-range"] == f"bytes 10-19/{len(data)}"
    r = await client.get(url, headers={"range": "bytes=1000-"})
    assert r.status_code == 206
    assert r.content == data[1000:]
    r = await client.get(url, headers={"range": "bytes=-5"})
    assert r.content == data[-5:]
    r = await client.get(url, headers={"range": "bytes=5000-6000"})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(data)}"
    r = await client.get(url, headers={"range": "bytes=0-1,5-6"})  # multi-range: whole blob
    assert r.status_code == 200
    assert r.content == data


async def test_manifest_put_get_head_by_tag_and_digest(client: httpx.AsyncClient) -> None:
    digest, body = await push_image(client, "lib/app", "v1")
    assert digest == sha256(body)
    for ref in ("v1", digest):
        r = await client.get(f"/v2/lib/app/manifests/{ref}", headers={"accept": OCI_MANIFEST})
        assert r.status_code == 200
        assert r.content == body  # exact bytes
        assert r.headers["content-type"] == OCI_MANIFEST
        assert r.headers["docker-content-digest"] == digest
        h = await client.head(f"/v2/lib/app/manifests/{ref}")
        assert h.status_code == 200
        assert h.headers["content-length"] == str(len(body))
        assert h.headers["docker-content-digest"] == digest


async def test_accept_negotiation(client: httpx.AsyncClient) -> None:
    await push_image(client, "lib/app", "v1")
    docker_only = "application/vnd.docker.distribution.manifest.v2+json"
    r = await client.get("/v2/lib/app/manifests/v1", headers={"accept": docker_only})
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    r = await client.get("/v2/lib/app/manifests/v1", headers={"accept": "*/*"})
    assert r.status_code == 200


async def test_manifest_with_missing_blob_is_refused(client: httpx.AsyncClient) -> None:
    config = b"{}"
    await push_blob(client, "r", config)
    body = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(config),
                "size": 2,
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(b"missing"),
                    "size": 7,
                }
            ],
        }
    ).encode()
    r = await client.put("/v2/r/manifests/t", content=body, headers={"content-type": OCI_MANIFEST})
    assert r.status_code == 400
    err = r.json()["errors"][0]
    assert err["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert err["detail"]["missing"] == [sha256(b"missing")]
    assert (await client.get("/v2/r/manifests/t")).status_code == 404


async def test_index_requires_child_manifests(client: httpx.AsyncClient) -> None:
    child_digest, child = await push_image(client, "r", "child")
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": child_digest,
                "size": len(child),
                "platform": {"os": "linux", "architecture": "amd64"},
            }
        ],
    }
    body = json.dumps(index).encode()
    r = await client.put("/v2/r/manifests/multi", content=body, headers={"content-type": OCI_INDEX})
    assert r.status_code == 201
    index["manifests"].append(  # type: ignore[attr-defined]
        {"mediaType": OCI_MANIFEST, "digest": sha256(b"nope"), "size": 4}
    )
    r = await client.put(
        "/v2/r/manifests/multi2",
        content=json.dumps(index).encode(),
        headers={"content-type": OCI_INDEX},
    )
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"


async def test_tags_list_pagination(client: httpx.AsyncClient) -> None:
    _, body = await push_image(client, "p", "t0")
    for tag in ["b", "a", "c", "d"]:
        r = await client.put(
            f"/v2/p/manifests/{tag}", content=body, headers={"content-type": OCI_MANIFEST}
        )
        assert r.status_code == 201
    r = await client.get("/v2/p/tags/list")
    assert r.json() == {"name": "p", "tags": ["a", "b", "c", "d", "t0"]}
    r = await client.get("/v2/p/tags/list?n=2")
    assert r.json()["tags"] == ["a", "b"]
    assert r.headers["link"] == '</v2/p/tags/list?n=2&last=b>; rel="next"'
    r = await client.get("/v2/p/tags/list?n=2&last=b")
    assert r.json()["tags"] == ["c", "d"]
    r = await client.get("/v2/p/tags/list?n=2&last=d")
    assert r.json()["tags"] == ["t0"]
    assert "link" not in r.headers
    r = await client.get("/v2/p/tags/list?n=0")
    assert r.json()["tags"] == []
    r = await client.get("/v2/unknown/tags/list")
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "NAME_UNKNOWN"


async def test_catalog_pagination(client: httpx.AsyncClient) -> None:
    for repo in ["z", "a/b", "m"]:
        await push_blob(client, repo, repo.encode())
    r = await client.get("/v2/_catalog")
    assert r.json() == {"repositories": ["a/b", "m", "z"]}
    r = await client.get("/v2/_catalog?n=1&last=a/b")
    assert r.json() == {"repositories": ["m"]}
    assert "last=m" in r.headers["link"]


async def test_referrers(client: httpx.AsyncClient) -> None:
    subject_digest, subject = await push_image(client, "r", "v1")
    subject_desc = {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": len(subject)}
    empty = b"{}"
    await push_blob(client, "r", empty)
    sig_layer = b"signature"
    await push_blob(client, "r", sig_layer)

    def referrer(artifact_type: str) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "artifactType": artifact_type,
                "config": {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": sha256(empty),
                    "size": 2,
                },
                "layers": [
                    {
                        "mediaType": "application/octet-stream",
                        "digest": sha256(sig_layer),
                        "size": len(sig_layer),
                    }
                ],
                "subject": subject_desc,
                "annotations": {"kind": artifact_type},
            }
        ).encode()

    digests = []
    for at in ("application/vnd.example.sig", "application/vnd.example.sbom"):
        body = referrer(at)
        r = await client.put(
            f"/v2/r/manifests/{sha256(body)}", content=body, headers={"content-type": OCI_MANIFEST}
        )
        assert r.status_code == 201, r.text
        assert r.headers["oci-subject"] == subject_digest
        digests.append(sha256(body))
    r = await client.get(f"/v2/r/referrers/{subject_digest}")
    assert r.status_code == 200
    assert r.headers["content-type"] == OCI_INDEX
    listed = r.json()["manifests"]
    assert {m["digest"] for m in listed} == set(digests)
    assert {m["artifactType"] for m in listed} == {
        "application/vnd.example.sig",
        "application/vnd.example.sbom",
    }
    r = await client.get(
        f"/v2/r/referrers/{subject_digest}?artifactType=application/vnd.example.sbom"
    )
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert [m["digest"] for m in r.json()["manifests"]] == [digests[1]]
    assert r.json()["manifests"][0]["annotations"] == {"kind": "application/vnd.example.sbom"}
    # unknown subject: an empty index, not an error
    r = await client.get(f"/v2/r/referrers/{sha256(b'none')}")
    assert r.status_code == 200
    assert r.json()["manifests"] == []


async def test_deletes(client: httpx.AsyncClient, store: ContentStore) -> None:
    digest, body = await push_image(client, "d", "v1")
    r = await client.put("/v2/d/manifests/v2", content=body, headers={"content-type": OCI_MANIFEST})
    assert r.status_code == 201
    # delete a tag: the manifest stays, reachable by digest and other tag
    assert (await client.delete("/v2/d/manifests/v1")).status_code == 202
    assert (await client.get("/v2/d/manifests/v1")).status_code == 404
    assert (await client.get("/v2/d/manifests/v2")).status_code == 200
    # delete by digest: tags that pointed at it go too
    assert (await client.delete(f"/v2/d/manifests/{digest}")).status_code == 202
    assert (await client.get(f"/v2/d/manifests/{digest}")).status_code == 404
    assert (await client.get("/v2/d/manifests/v2")).status_code == 404
    assert (await client.get("/v2/d/tags/list")).json()["tags"] == []
    assert (await client.delete(f"/v2/d/manifests/{digest}")).status_code == 404
    # blobs
    blob = await push_blob(client, "d", b"to delete")
    assert (await client.delete(f"/v2/d/blobs/{blob}")).status_code == 202
    assert (await client.get(f"/v2/d/blobs/{blob}")).status_code == 404
    assert not store.blobs.path(store_digest(blob)).exists()
    r = await client.delete(f"/v2/d/blobs/{blob}")
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "BLOB_UNKNOWN"


def store_digest(value: str):  # type: ignore[no-untyped-def]
    from registry_proxy.digest import Digest

    return Digest.parse(value)


async def test_blob_shared_by_two_repos_survives_one_delete(client: httpx.AsyncClient) -> None:
    blob = await push_blob(client, "one", b"shared")
    await push_blob(client, "two", b"shared")
    assert (await client.delete(f"/v2/one/blobs/{blob}")).status_code == 202
    assert (await client.get(f"/v2/two/blobs/{blob}")).content == b"shared"


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_pushes_refused_by_default(store: ContentStore, method: str) -> None:
    from registry_proxy.app import create_app

    app = create_app(store)  # default settings: push = false
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://r") as c:
        path = {
            "POST": "/v2/x/blobs/uploads/",
            "PUT": "/v2/x/manifests/latest",
            "PATCH": "/v2/x/blobs/uploads/0b6bd2a6-7e5b-4e36-a1b4-0e3c9b5e3f52",
            "DELETE": f"/v2/x/blobs/{sha256(b'')}",
        }[method]
        r = await c.request(method, path, content=b"{}")
        assert r.status_code == 405
        assert r.json()["errors"][0]["code"] == "UNSUPPORTED"
        assert (await c.get("/v2/")).status_code == 200


async def test_put_by_digest_sets_the_tag_parameters(client: httpx.AsyncClient) -> None:
    config, layers = b'{"os":"linux"}', [b"tagged layer"]
    for blob in (config, *layers):
        await push_blob(client, "t/p", blob)
    body = image_manifest(config, layers)
    digest = sha256(body)
    r = await client.put(
        f"/v2/t/p/manifests/{digest}?tag=a&tag=b&tag=a",
        content=body,
        headers={"content-type": OCI_MANIFEST},
    )
    assert r.status_code == 201, r.text
    assert r.headers.get_list("oci-tag") == ["a", "b"]
    for tag in ("a", "b"):
        got = await client.get(f"/v2/t/p/manifests/{tag}", headers={"accept": OCI_MANIFEST})
        assert got.content == body and got.headers["docker-content-digest"] == digest
    assert (await client.get("/v2/t/p/tags/list")).json()["tags"] == ["a", "b"]
    # one bad tag refuses the whole push: nothing stored, no tag set
    other = image_manifest(config, layers, annotations={"n": "2"})
    bad = await client.put(
        f"/v2/t/p/manifests/{sha256(other)}?tag=c&tag=-bad",
        content=other,
        headers={"content-type": OCI_MANIFEST},
    )
    assert bad.status_code == 400 and bad.json()["errors"][0]["code"] == "MANIFEST_INVALID"
    assert (await client.get(f"/v2/t/p/manifests/{sha256(other)}")).status_code == 404
    assert (await client.get("/v2/t/p/tags/list")).json()["tags"] == ["a", "b"]


async def test_a_manifest_pushed_by_sha512_answers_sha512(client: httpx.AsyncClient) -> None:
    config, layers = b'{"os":"linux","n":512}', [b"sha512 layer"]
    for blob in (config, *layers):
        await push_blob(client, "t/s", blob)
    body = image_manifest(config, layers)
    digest = "sha512:" + hashlib.sha512(body).hexdigest()
    r = await client.put(
        f"/v2/t/s/manifests/{digest}?tag=v1", content=body, headers={"content-type": OCI_MANIFEST}
    )
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    for ref in (digest, "v1"):
        got = await client.get(f"/v2/t/s/manifests/{ref}", headers={"accept": OCI_MANIFEST})
        assert got.status_code == 200 and got.content == body
        assert got.headers["docker-content-digest"] == digest
    head = await client.head(f"/v2/t/s/manifests/{digest}", headers={"accept": OCI_MANIFEST})
    assert head.headers["docker-content-digest"] == digest
