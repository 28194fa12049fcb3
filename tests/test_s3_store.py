"""The artifact store on an fsspec URL (``s3://``) against a local S3-compatible server (moto's
server on 127.0.0.1): the real ``area_datasets`` asset builds a few area partitions into the
bucket through the store's local mirror, and the objects read back byte-identical to a build
into a plain local folder; a second machine (a fresh mirror) gets the same bytes; writes never
leave a partial object under a final key."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.area_store_fixtures import AREA_CONFIG, write_area_inputs

pytest.importorskip("s3fs")
pytest.importorskip("upath")
BUCKET = "areacal-test"
URL = f"s3://{BUCKET}/build"


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("moto.server")
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                            "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                      AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _fs(endpoint):
    import s3fs

    return s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)


def _build(store, keys):
    import dagster as dg
    from dagster._core.storage.tags import (ASSET_PARTITION_RANGE_END_TAG,
                                            ASSET_PARTITION_RANGE_START_TAG)

    import assets.areas as areas

    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize([areas.area_datasets], resources={"store": store},
                                instance=instance, run_config=AREA_CONFIG,
                                tags={ASSET_PARTITION_RANGE_START_TAG: keys[0],
                                      ASSET_PARTITION_RANGE_END_TAG: keys[-1]})
        assert result.success
        key = dg.AssetKey("area_datasets")
        return {pk: instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[pk]), limit=1)
            .records[0].asset_materialization.metadata["sha256"].value for pk in keys}


def test_area_partitions_into_s3_read_back_byte_identical(s3_endpoint, tmp_path):
    from calibration_core.areas import all_area_keys, parse_area_key
    from calibration_core.io_utils import sha256_bytes, sha256_file
    from resources.store import ArtifactStore

    keys = all_area_keys()
    keys = keys[keys.index("district-CA-01"): keys.index("district-CA-14") + 1]
    # the reference: the same inputs, built into a plain local folder
    local = write_area_inputs(tmp_path / "local")
    expected = _build(ArtifactStore(root=str(local)), keys)
    # the shared store: inputs uploaded by one machine, built through another's mirror
    fs = _fs(s3_endpoint)
    inputs = write_area_inputs(tmp_path / "inputs")
    for path in sorted(p for p in inputs.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{URL}/{path.relative_to(inputs).as_posix()}")
    store = ArtifactStore(root=str(tmp_path / "mirror1"), url=URL, endpoint_url=s3_endpoint)
    recorded = _build(store, keys)
    assert recorded == expected
    fs.invalidate_cache()
    for pk in keys:
        rel = parse_area_key(pk).relative_path
        data = fs.cat_file(f"{URL}/areas/{rel}")
        assert sha256_bytes(data) == expected[pk] == sha256_file(local / "areas" / rel), pk
    # no temporaries or partial objects anywhere in the bucket
    names = [k.rsplit("/", 1)[-1] for k in fs.find(URL)]
    assert not [n for n in names if n.startswith(".")], names
    # a second machine: its fresh mirror downloads the same bytes; a second pull is a no-op
    mirror2 = ArtifactStore(root=str(tmp_path / "mirror2"), url=URL, endpoint_url=s3_endpoint)
    pulled = mirror2.remote().pull_all()
    assert len(pulled) == len(fs.find(URL))
    for pk in keys:
        rel = parse_area_key(pk).relative_path
        assert sha256_file(tmp_path / "mirror2" / "areas" / rel) == expected[pk]
    assert mirror2.remote().pull_all() == []


def test_writes_never_leave_a_partial_object(s3_endpoint, tmp_path):
    from calibration_core.io_utils import atomic_path
    from resources.store import ArtifactStore

    fs = _fs(s3_endpoint)
    store = ArtifactStore(root=str(tmp_path / "mirror"), url=f"{URL}-atomic",
                          endpoint_url=s3_endpoint)
    mirror = store.remote()
    mirror.attach()
    try:
        final = store.path("calibration", "blob.bin")
        with atomic_path(final) as tmp:
            tmp.write_bytes(b"first version")
        key = f"{URL}-atomic/calibration/blob.bin"
        assert fs.cat_file(key) == b"first version"
        # a write that fails before it completes uploads nothing
        with pytest.raises(RuntimeError), atomic_path(final) as tmp:
            tmp.write_bytes(b"half of the second")
            raise RuntimeError("killed")
        fs.invalidate_cache()
        assert fs.cat_file(key) == b"first version"
    finally:
        mirror.detach()

    # an upload that dies part-way (a multipart PUT of 12 MiB in 5 MiB parts, interrupted
    # after its first part): the upload is aborted and the key keeps its previous object
    from fsspec.callbacks import Callback

    class Interrupt(Callback):
        def relative_update(self, inc=1):
            super().relative_update(inc)
            raise ConnectionError("network lost after the first part")

    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).bytes(12 << 20))
    with pytest.raises(ConnectionError):
        fs.put_file(str(big), key, chunksize=5 << 20, callback=Interrupt(),
                    max_concurrency=1)
    fs.invalidate_cache()
    assert fs.cat_file(key) == b"first version"
    assert fs.find(f"{URL}-atomic") == [key.split("://", 1)[1]]


def test_filesystem_url_puts_under_a_temporary_name_then_moves(tmp_path):
    """On a filesystem behind a URL (not an object store) the store puts each file under a
    temporary name and moves it: a reader never sees a half-copied file at the final path."""
    from resources.store import RemoteMirror

    target = tmp_path / "shared"
    target.mkdir()
    mirror = RemoteMirror(f"file://{target}", tmp_path / "mirror")
    assert mirror.protocol not in ("s3",)
    src = tmp_path / "mirror" / "areas" / "states" / "CA.h5"
    src.parent.mkdir(parents=True)
    src.write_bytes(b"x" * 1000)
    calls = []
    original = mirror.fs.mv

    def mv(a, b, **kw):
        calls.append((a, b))
        assert not Path(b).exists()  # the final path appears only by the move
        return original(a, b, **kw)

    mirror.fs.mv = mv
    mirror.push(src)
    assert (target / "areas" / "states" / "CA.h5").read_bytes() == b"x" * 1000
    assert len(calls) == 1 and Path(calls[0][0]).name.startswith(".CA.h5.p")
    assert sorted(p.name for p in (target / "areas" / "states").iterdir()) == ["CA.h5"]
    shutil.rmtree(target)
