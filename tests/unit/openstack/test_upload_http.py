"""`snapbuild upload` at the HTTP edge: what is created, streamed, verified and deleted (real openstacksdk +
keystoneauth + requests underneath; Glance's answers scripted like the API reference)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import requests_mock
from httpcloud import HTTPCloud

from snapbuild.errors import BuildError, CloudError, UserError
from snapbuild.openstack.cloud import Cloud
from snapbuild.openstack.upload import HashingReader, UploadSettings, find_manifest, upload_image
from snapbuild.run.context import Reporter


class GlanceUpload(HTTPCloud):
    """HTTPCloud plus Glance's upload API: POST /images, PUT /file and /stage, POST /import, /info/*."""

    def __init__(self, mocker: requests_mock.Mocker) -> None:
        super().__init__(mocker)
        self.put_statuses: list[int] = []      # answers for the next PUTs of data (then 204)
        self.corrupt = False                   # Glance hashes something else than was sent
        self.stored: dict[str, bytes] = {}
        self.stores = [{"id": "file1", "default": "true"}]
        self.store_details: list[dict[str, Any]] | None = None   # None: 403 (not admin)
        self.import_fails = False

    def _dispatch(self, request: Any, context: Any) -> str:
        url = urlparse(request.url)
        m = re.fullmatch(r"/v2/images/([^/]+)/(file|stage)", url.path)
        if request.method == "PUT" and m:
            return self._put_data(request, context, m.group(1), m.group(2))
        return super()._dispatch(request, context)

    def _put_data(self, request: Any, context: Any, image_id: str, where: str) -> str:
        body = request.body
        chunks = []
        while True:                       # reading drives the reader: hashing, progress, a Ctrl-C
            chunk = body.read(65536) if hasattr(body, "read") else b""
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        assert int(request.headers["Content-Length"]) == len(data)
        if self.put_statuses:
            context.status_code = self.put_statuses.pop(0)
            return json.dumps({"message": "Service Unavailable"})
        image = self.images[image_id]
        self.stored[image_id] = data
        image["status"] = "uploading" if where == "stage" else "saving"
        image["polls"] = 0
        context.status_code = 204
        return ""

    def _image(self, method: str, path: str, query: dict[str, str], body: Any, context: Any) -> tuple[int, Any]:
        p = path[len("/v2"):]
        if p == "/info/stores":
            return 200, {"stores": self.stores}
        if p == "/info/stores/detail":
            if self.store_details is None:
                return 403, {"message": "Access was denied to this resource."}
            return 200, {"stores": self.store_details}
        if p == "/info/import":
            return 200, {"import-methods": {"type": "array", "value": ["glance-direct", "web-download"]}}
        if p == "/images" and method == "POST":
            image_id = str(uuid.uuid4())
            image = self.add_image(image_id, body.pop("name"), **body)
            image.update(status="queued", size=None, checksum=None, os_hash_algo=None, os_hash_value=None)
            return 201, self._image_view(image)
        m = re.fullmatch(r"/images/([^/]+)/import", p)
        if m and method == "POST":
            image = self.images[m.group(1)]
            assert image["status"] == "uploading" and body == {"method": {"name": "glance-direct"}}
            image["status"] = "importing"
            return 202, None
        return super()._image(method, path, query, body, context)

    def _advance_image(self, image: dict[str, Any]) -> None:
        if image["id"] not in self.stored or image["status"] not in ("saving", "importing"):
            return super()._advance_image(image)
        data = self.stored[image["id"]] + (b"x" if self.corrupt else b"")
        if image["status"] == "importing" and self.import_fails:
            image.update(status="queued", os_glance_failed_import="file1")
            return None
        image.update(status="active", size=len(self.stored[image["id"]]), checksum=hashlib.md5(data).hexdigest(),
                     os_hash_algo="sha512", os_hash_value=hashlib.sha512(data).hexdigest())
        return None


@pytest.fixture
def api() -> Iterator[GlanceUpload]:
    with requests_mock.Mocker() as mocker:
        yield GlanceUpload(mocker)


@pytest.fixture(scope="module")
def qcow2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real qcow2 with 3 MiB of random data in it (so the digests mean something)."""
    folder = tmp_path_factory.mktemp("img")
    raw = folder / "disk.raw"
    raw.write_bytes(bytes(range(256)) * 4096 + __import__("os").urandom(2 << 20))
    out = folder / "disk.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out)], check=True)
    return out


def _settings(path: Path, **kw: Any) -> UploadSettings:
    values: dict[str, Any] = {"file": path, "name": "docker-ce-test", "recipe": "docker-ce",
                              "recipe_properties": {"os_distro": "ubuntu", "hw_disk_bus": "virtio"},
                              "properties": {"os_distro": "ubuntu-custom"}, "min_disk_gb": 10, "min_ram_mb": 1024,
                              "tags": ("marketplace",), "progress_tty": False}
    values.update(kw)
    return UploadSettings(**values)


def _ledgers(state: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((state / "builds").glob("*.json"))]


def test_upload_streams_verifies_and_finishes_with_properties(cloud: Cloud, api: GlanceUpload, qcow2: Path,
                                                              isolated_state: Path) -> None:
    out = io.StringIO()
    result = upload_image(_settings(qcow2), Reporter(out), cloud=cloud)

    data = qcow2.read_bytes()
    assert api.stored[result.image_id] == data
    assert result.sha512 == hashlib.sha512(data).hexdigest() and result.sha256 == hashlib.sha256(data).hexdigest()
    created = api.last_json("POST", r"/v2/images$")
    assert created["disk_format"] == "qcow2" and created["tags"] == ["snapbuild"]    # marked while partial
    assert created["snapbuild_installation_id"] and created["snapbuild_expires_at"]
    assert created["min_disk"] == 10 and created["min_ram"] == 1024
    image = api.images[result.image_id]
    assert image["status"] == "active" and image["tags"] == ["marketplace"]         # lost the snapbuild tag
    assert image["os_distro"] == "ubuntu-custom" and image["hw_disk_bus"] == "virtio"
    assert image["snapbuild_source_sha256"] == result.sha256 and image["snapbuild_recipe"] == "docker-ce"
    for temporary in ("snapbuild_installation_id", "snapbuild_host", "snapbuild_created_at", "snapbuild_expires_at"):
        assert temporary not in image
    assert api.deletes() == []
    assert re.search(r"upload: done, [\d.]+ MiB in ", out.getvalue())
    assert _ledgers(isolated_state) == []      # a finished upload leaves no ledger


def test_same_name_same_digest_is_not_uploaded_again(cloud: Cloud, api: GlanceUpload, qcow2: Path,
                                                     isolated_state: Path) -> None:
    first = upload_image(_settings(qcow2), Reporter(io.StringIO()), cloud=cloud)
    posts = len(api.calls("POST", r"/v2/images$"))
    out = io.StringIO()
    second = upload_image(_settings(qcow2), Reporter(out), cloud=cloud)
    assert second.already and second.image_id == first.image_id
    assert len(api.calls("POST", r"/v2/images$")) == posts and len(api.calls("PUT", r"/file$")) == 1
    assert f"already uploaded: {first.image_id}" in out.getvalue()


def test_digest_mismatch_deletes_the_image_and_fails(cloud: Cloud, api: GlanceUpload, qcow2: Path,
                                                     isolated_state: Path) -> None:
    api.corrupt = True
    with pytest.raises(BuildError, match="stored something else"):
        upload_image(_settings(qcow2), Reporter(io.StringIO()), cloud=cloud)
    (image_id,) = api.stored
    assert api.deletes() == [f"DELETE /v2/images/{image_id}"]
    assert api.images[image_id]["status"] == "deleted"
    assert all(not ledger["resources"] for ledger in _ledgers(isolated_state))


class CtrlCAt(HashingReader):
    """The upload's reader, with a Ctrl-C once 1 MiB has been read."""

    def read(self, n: int = -1) -> bytes:
        chunk = super().read(n)
        if self.sent >= 1 << 20:
            raise KeyboardInterrupt
        return chunk


def test_ctrl_c_mid_stream_deletes_the_partial_image(cloud: Cloud, api: GlanceUpload, qcow2: Path,
                                                     isolated_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import snapbuild.openstack.upload as upload_module

    monkeypatch.setattr(upload_module, "HashingReader", CtrlCAt)
    with pytest.raises(KeyboardInterrupt):
        upload_image(_settings(qcow2), Reporter(io.StringIO()), cloud=cloud)
    (created,) = [i for i in api.images.values() if i["name"] == "docker-ce-test"]
    assert api.deletes() == [f"DELETE /v2/images/{created['id']}"]
    assert created["status"] == "deleted"
    assert _ledgers(isolated_state) == []     # undone, so nothing left for cleanup to find


def test_transient_failure_starts_afresh_with_a_new_image_and_stream(cloud: Cloud, api: GlanceUpload, qcow2: Path,
                                                                     isolated_state: Path) -> None:
    api.put_statuses = [503]
    result = upload_image(_settings(qcow2), Reporter(io.StringIO()), cloud=cloud)
    puts = api.calls("PUT", r"/file$")
    assert len(puts) == 2 and len(api.calls("POST", r"/v2/images$")) == 2
    first = puts[0].split("/")[3]
    assert first != result.image_id
    assert api.deletes() == [f"DELETE /v2/images/{first}"]        # the consumed attempt, nothing else
    assert api.stored[result.image_id] == qcow2.read_bytes()


def test_a_refused_create_is_not_retried(cloud: Cloud, api: GlanceUpload, qcow2: Path, isolated_state: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr("snapbuild.run.context.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("snapbuild.run.context.time.sleep", lambda s: clock.__setitem__(0, clock[0] + s))
    api.fault("POST", r"image\.example\.com/v2/images$", status=503)
    with pytest.raises(CloudError, match="503"):
        upload_image(_settings(qcow2, attempts=1), Reporter(io.StringIO()), cloud=cloud)
    assert len(api.calls("POST", r"/v2/images$")) == 1 and api.calls("PUT") == []
    # A gateway's 503 may still have made the record: after the name check before the create, looked for until
    # it settles (at 0, 2, 4, 6, 8 and 10 s).
    assert len(api.calls("GET", r"/v2/images$")) == 1 + 6


def test_a_create_glance_refused_is_looked_for_once(cloud: Cloud, api: GlanceUpload, qcow2: Path,
                                                    isolated_state: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    api.fault("POST", r"image\.example\.com/v2/images$", status=400)
    with pytest.raises(CloudError, match="400"):
        upload_image(_settings(qcow2, attempts=1), Reporter(io.StringIO()), cloud=cloud)
    assert len(api.calls("GET", r"/v2/images$")) == 1 + 1     # the name check, then one look


def test_import_path_stages_then_imports(cloud: Cloud, api: GlanceUpload, qcow2: Path, isolated_state: Path) -> None:
    result = upload_image(_settings(qcow2, use_import=True), Reporter(io.StringIO()), cloud=cloud)
    assert api.calls("PUT", r"/stage$") == [f"PUT /v2/images/{result.image_id}/stage"]
    assert api.calls("POST", r"/import$") == [f"POST /v2/images/{result.image_id}/import"]
    assert api.images[result.image_id]["status"] == "active"


def test_failed_import_deletes_the_image(cloud: Cloud, api: GlanceUpload, qcow2: Path, isolated_state: Path) -> None:
    api.import_fails = True
    with pytest.raises(CloudError, match="import failed"):
        upload_image(_settings(qcow2, use_import=True), Reporter(io.StringIO()), cloud=cloud)
    assert len(api.deletes()) == 1


def test_ceph_backend_warns_about_qcow2(cloud: Cloud, api: GlanceUpload, qcow2: Path, isolated_state: Path) -> None:
    api.store_details = [{"id": "ceph1", "type": "rbd", "default": True}]
    out = io.StringIO()
    upload_image(_settings(qcow2), Reporter(out), cloud=cloud)
    assert "wants raw images" in out.getvalue()


def test_non_disk_file_is_refused_before_contacting_the_cloud(api: GlanceUpload, tmp_path: Path,
                                                              isolated_state: Path) -> None:
    iso = tmp_path / "x.vmdk"
    subprocess.run(["qemu-img", "create", "-f", "vmdk", str(iso), "16M"], check=True, capture_output=True)
    with pytest.raises(UserError, match="not uploadable") as err:
        upload_image(_settings(iso), Reporter(io.StringIO()), cloud=None)
    assert err.value.exit_code == 2
    assert api.m.request_history == []


def test_manifest_beside_the_file_gives_provenance_only_when_it_matches(cloud: Cloud, api: GlanceUpload,
                                                                        qcow2: Path, tmp_path: Path,
                                                                        isolated_state: Path) -> None:
    copy = tmp_path / "out.qcow2"
    copy.write_bytes(qcow2.read_bytes())
    sha = hashlib.sha256(copy.read_bytes()).hexdigest()
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"build_id": "20261122010000-abcdef12", "builder": "chroot", "recipe": {"name": "k8s"},
         "output": {"path": str(copy), "sha256": sha}}))
    assert find_manifest(copy) is not None
    result = upload_image(_settings(copy, recipe=""), Reporter(io.StringIO()), cloud=cloud)
    image = api.images[result.image_id]
    assert image["snapbuild_build_id"] == "20261122010000-abcdef12" and image["snapbuild_builder"] == "chroot"
    assert image["snapbuild_recipe"] == "k8s"


def test_reader_has_len_and_hashes_what_it_hands_out(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc" * 10000)
    seen: list[int] = []
    reader = HashingReader(f, seen.append)
    assert len(reader) == 30000 and not isinstance(reader, io.RawIOBase)
    while reader.read(4096):
        pass
    assert reader.digest("sha512") == hashlib.sha512(b"abc" * 10000).hexdigest() and seen[-1] == 30000
    reader.close()


def test_upload_progress_is_plain_lines_when_stderr_is_not_a_terminal(cloud: Cloud, api: GlanceUpload, qcow2: Path,
                                                                        isolated_state: Path) -> None:
    out = io.StringIO()
    upload_image(_settings(qcow2, progress_tty=None), Reporter(out), cloud=cloud)
    text = out.getvalue()
    assert "\r" not in text and "|" not in text                 # no bar drawn
    assert "upload: started (" in text and re.search(r"upload: done, [\d.]+ [KM]iB in ", text), text


def test_upload_draws_a_bar_on_a_terminal(cloud: Cloud, api: GlanceUpload, qcow2: Path,
                                          isolated_state: Path) -> None:
    out = io.StringIO()
    upload_image(_settings(qcow2, progress_tty=True), Reporter(out), cloud=cloud)
    assert re.search(r"\r  upload: 100%\|#+\|", out.getvalue()), out.getvalue()


def test_image_options_reach_the_record_and_the_finishing_patch(cloud: Cloud, api: GlanceUpload, qcow2: Path,
                                                                isolated_state: Path) -> None:
    settings = _settings(qcow2, min_disk_gb=20, min_ram_mb=2048, protected=True, hidden=True, visibility="shared")
    result = upload_image(settings, Reporter(io.StringIO()), cloud=cloud)
    created = api.last_json("POST", r"/v2/images$")
    assert (created["min_disk"], created["min_ram"]) == (20, 2048)
    assert "protected" not in created and created["visibility"] == "private"   # a partial image stays deletable
    ops = {op["path"]: op["value"] for op in api.last_json("PATCH", rf"/v2/images/{result.image_id}$")
           if op["op"] != "remove"}
    assert (ops["/protected"], ops["/os_hidden"], ops["/visibility"]) == (True, True, "shared")
    image = api.images[result.image_id]
    assert (image["protected"], image["os_hidden"], image["visibility"]) == (True, True, "shared")
