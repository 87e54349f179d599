"""Remote storage (issue 15): fsspec URLs and file objects, against a real S3-compatible
server on loopback (moto's server mode) and fsspec's ``memory://``."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

fsspec = pytest.importorskip("fsspec")
s3fs = pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

import mlconv  # noqa: E402
from mlconv import storage  # noqa: E402
from mlconv.cli.main import cli  # noqa: E402
from mlconv.errors import MlconvError, OutputExistsError, SourceNotFoundError  # noqa: E402

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on a free loopback port, for the whole module."""
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """An s3fs filesystem on the loopback server with a fresh bucket; env set so mlconv
    (and a CLI subprocess) reach it the usual way (AWS_* variables)."""
    for k, v in CREDS.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    s3fs.S3FileSystem.clear_instance_cache()
    fs = s3fs.S3FileSystem()
    bucket = f"b{os.urandom(4).hex()}"
    fs.mkdir(bucket)
    yield fs, bucket
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def mem():
    fs = fsspec.filesystem("memory")
    root = f"/t{os.urandom(4).hex()}"
    fs.mkdir(root)
    yield fs, root
    fs.rm(root, recursive=True)


def _safetensors(tensors, metadata=None) -> bytes:
    from safetensors.numpy import save

    return save(tensors, metadata=metadata)


def _count():
    storage.STATS.update(requests=0, bytes=0)
    return storage.STATS


def test_memory_inspect_fetches_header_only(mem):
    fs, root = mem
    data = _safetensors({"w": np.arange(2_000_000, dtype=np.float32), "b": np.ones(3)},
                        {"k": "v"})
    fs.pipe_file(f"{root}/m.safetensors", data)
    stats = _count()
    manifest = mlconv.inspect(f"memory://{root}/m.safetensors")
    assert manifest["path"] == f"memory://{root}/m.safetensors"
    assert manifest["size"] == len(data)
    assert {e["name"]: e["shape"] for e in manifest["entries"]} == {"w": [2_000_000],
                                                                     "b": [3]}
    assert manifest["metadata"] == {"k": "v"}
    assert stats["bytes"] <= storage.HEAD and stats["requests"] == 1


@pytest.mark.parametrize("kind", ["npy", "parquet", "arrow", "gguf", "npz"])
def test_memory_inspect_headers_only_other_formats(mem, tmp_path, kind):
    """The manifest equals the local file's, from a small part of the object."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = mem
    local = tmp_path / f"x.{kind}"
    if kind == "npy":
        np.save(local, np.zeros((1000, 1000)))
    elif kind == "npz":  # the central directory and each member's headers
        np.savez(local, a=np.zeros((500, 1000)), b=np.ones(10), c=np.zeros((500, 1000)))
    elif kind == "gguf":  # key-values and tensor infos from a prefix, payloads never
        mlconv.save({"w": np.zeros((1000, 1000), np.float32)}, local,
                    metadata={"general.name": "m"})
    else:
        table = pa.table({"a": np.arange(1_000_000), "b": np.random.default_rng(0).random(
            1_000_000)})
        if kind == "parquet":
            pq.write_table(table, local, row_group_size=100_000, compression="none")
        else:
            with pa.ipc.new_file(local, table.schema) as w:
                for batch in table.to_batches(100_000):
                    w.write_batch(batch)
    fs.put_file(str(local), f"{root}/x.{kind}")
    stats = _count()
    remote = mlconv.inspect(f"memory://{root}/x.{kind}")
    assert stats["bytes"] < 200_000 < local.stat().st_size
    here = mlconv.inspect(local)
    assert {**remote, "path": None} == {**here, "path": None}


def test_file_objects_and_file_urls(tmp_path):
    data = _safetensors({"w": np.arange(10, dtype=np.int16)})
    manifest = mlconv.inspect(io.BytesIO(data))
    assert manifest["entries"][0]["shape"] == [10]
    with mlconv.open(io.BytesIO(data), format="safetensors") as b:
        assert b["w"].numpy().tolist() == list(range(10))
    out = io.BytesIO()
    mlconv.convert(io.BytesIO(data), out, from_format="safetensors", to_format="npy")
    out.seek(0)
    assert np.load(out).tolist() == list(range(10))
    (tmp_path / "a.safetensors").write_bytes(data)
    url = (tmp_path / "a.safetensors").as_uri()
    assert mlconv.inspect(url)["path"] == str(tmp_path / "a.safetensors")
    mlconv.convert(url, (tmp_path / "a.npy").as_uri())
    assert np.load(tmp_path / "a.npy").tolist() == list(range(10))


def test_s3_inspect_200mb_convert_s3_to_s3_and_back(s3, tmp_path):
    """A 200 MB object: inspect fetches < 1 MB; local -> S3 -> S3 -> local is exact."""
    fs, bucket = s3
    big = np.random.default_rng(1).integers(0, 255, 200 << 20, dtype=np.uint8)
    src = tmp_path / "big.safetensors"
    src.write_bytes(_safetensors({"big": big, "small": np.arange(7.0)}, {"k": "v"}))
    mlconv.convert(src, f"s3://{bucket}/in/big.safetensors")
    mlconv.convert(src, tmp_path / "ref.safetensors")  # the same conversion, local
    assert fs.size(f"{bucket}/in/big.safetensors") == (tmp_path / "ref.safetensors").stat().st_size
    os.unlink(tmp_path / "ref.safetensors")
    stats = _count()
    manifest = mlconv.inspect(f"s3://{bucket}/in/big.safetensors")
    assert stats["bytes"] < 1 << 20, stats
    assert {e["name"] for e in manifest["entries"]} == {"big", "small"}
    mlconv.convert(f"s3://{bucket}/in/big.safetensors", f"s3://{bucket}/out/big.h5")
    mlconv.convert(f"s3://{bucket}/out/big.h5", tmp_path / "back.safetensors")
    from safetensors.numpy import load_file

    back = load_file(tmp_path / "back.safetensors")
    assert np.array_equal(back["big"], big) and back["small"].tolist() == list(np.arange(7.0))
    assert load_file(tmp_path / "back.safetensors", ) is not None
    assert sorted(os.listdir(tmp_path)) == ["back.safetensors", "big.safetensors"]


def test_s3_roundtrip_exact_bytes(s3, tmp_path):
    fs, bucket = s3
    np.save(tmp_path / "x.npy", np.arange(1000, dtype=">i4").reshape(10, 100))
    mlconv.convert(tmp_path / "x.npy", f"s3://{bucket}/x.safetensors")
    mlconv.convert(f"s3://{bucket}/x.safetensors", tmp_path / "y.npy")
    mlconv.convert(tmp_path / "y.npy", f"s3://{bucket}/y.npy")
    assert fs.cat_file(f"{bucket}/y.npy") == (tmp_path / "y.npy").read_bytes()
    assert np.array_equal(np.load(tmp_path / "y.npy"), np.load(tmp_path / "x.npy"))
    assert mlconv.validate(f"s3://{bucket}/y.npy").ok


def test_s3_output_exists_refused_then_forced(s3, tmp_path):
    fs, bucket = s3
    np.save(tmp_path / "x.npy", np.arange(3))
    fs.pipe_file(f"{bucket}/x.npz", b"old")
    with pytest.raises(OutputExistsError) as e:
        mlconv.convert(tmp_path / "x.npy", f"s3://{bucket}/x.npz")
    assert f"s3://{bucket}/x.npz" in str(e.value)
    assert fs.cat_file(f"{bucket}/x.npz") == b"old"
    mlconv.convert(tmp_path / "x.npy", f"s3://{bucket}/x.npz", overwrite=True)
    assert fs.cat_file(f"{bucket}/x.npz")[:2] == b"PK"


def test_interrupted_upload_leaves_nothing(s3, tmp_path, monkeypatch):
    """A multipart upload that fails half-way is aborted: no object at DST, one-line error."""
    fs, bucket = s3
    np.save(tmp_path / "x.npy", np.zeros(110 << 20, np.uint8))  # s3fs: multipart from 100 MiB
    if not hasattr(s3fs.S3FileSystem, "_upload_file_part_concurrent"):
        pytest.skip("this s3fs uploads parts another way")
    calls = []
    real = s3fs.S3FileSystem._upload_file_part_concurrent

    async def dies(self, *args, **kwargs):
        calls.append(1)
        raise ConnectionResetError("connection lost mid-upload")

    monkeypatch.setattr(s3fs.S3FileSystem, "_upload_file_part_concurrent", dies)
    with pytest.raises(MlconvError) as e:
        mlconv.convert(tmp_path / "x.npy", f"s3://{bucket}/x.npy")
    assert calls, "the upload was not multipart"
    assert f"s3://{bucket}/x.npy" in str(e.value) and "\n" not in str(e.value)
    fs.invalidate_cache()
    assert not fs.exists(f"{bucket}/x.npy")
    monkeypatch.setattr(s3fs.S3FileSystem, "_upload_file_part_concurrent", real)
    mlconv.convert(tmp_path / "x.npy", f"s3://{bucket}/x.npy")  # and works again
    assert fs.size(f"{bucket}/x.npy") >= (tmp_path / "x.npy").stat().st_size


def test_failed_conversion_leaves_nothing(mem, tmp_path):
    fs, root = mem
    (tmp_path / "x.safetensors").write_bytes(_safetensors({"w": np.ones(3, np.float32)},
                                                          {"k": "v"}))
    with pytest.raises(MlconvError, match="metadata"):
        mlconv.convert(tmp_path / "x.safetensors", f"memory://{root}/x.npz")
    assert fs.ls(root) == []


def test_missing_key_bucket_and_bad_credentials(s3, monkeypatch):
    fs, bucket = s3
    with pytest.raises(SourceNotFoundError) as e:
        mlconv.inspect(f"s3://{bucket}/nope.safetensors")
    assert str(e.value) == f"no such file (or bucket) (s3://{bucket}/nope.safetensors)"
    with pytest.raises(SourceNotFoundError):
        mlconv.load(f"s3://no-such-bucket-{bucket}/x.npy")
    fs.pipe_file(f"{bucket}/x.npy", b"\x93NUMPY")
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(MlconvError) as e:
        mlconv.inspect(f"s3://{bucket}/x.npy")
    assert "access denied" in str(e.value) or "Forbidden" in str(e.value)
    assert f"s3://{bucket}/x.npy" in str(e.value) and "\n" not in str(e.value)


def _cli(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_cli_remote(s3, tmp_path, monkeypatch):
    fs, bucket = s3
    np.save(tmp_path / "x.npy", np.arange(6.0))
    r = _cli(str(tmp_path / "x.npy"), f"s3://{bucket}/x.safetensors")
    assert r.exit_code == 0, r.output
    r = _cli("inspect", f"s3://{bucket}/x.safetensors", "--json")
    assert r.exit_code == 0 and f"s3://{bucket}/x.safetensors" in r.output
    r = _cli("validate", f"s3://{bucket}/*.safetensors")
    assert r.exit_code == 0 and "1 passed" in r.output
    r = _cli(f"s3://{bucket}/x.safetensors", f"s3://{bucket}/x.safetensors")
    assert r.exit_code == 1
    r = _cli("inspect", f"s3://{bucket}/missing.npy")
    assert r.exit_code == 1
    assert r.output.strip() == f"mlconv: error: no such file (or bucket) " \
                               f"(s3://{bucket}/missing.npy)"
    # expectation files and many files into a folder, remote on both sides
    fs.pipe_file(f"{bucket}/e.json", b'{"entries": [{"name": "x", "dtype": "float64"}]}')
    r = _cli("validate", f"s3://{bucket}/x.safetensors", "--schema", f"s3://{bucket}/e.json")
    assert r.exit_code == 0, r.output
    fs.pipe_file(f"{bucket}/e.json", b'{"entries": [{"name": "x", "dtype": "int8"}]}')
    r = _cli("validate", f"s3://{bucket}/x.safetensors", "--schema", f"s3://{bucket}/e.json")
    assert r.exit_code == 1 and "expected int8" in r.output, r.output
    np.save(tmp_path / "y.npy", np.arange(3))
    _cli(str(tmp_path / "y.npy"), f"s3://{bucket}/in/y.npy")
    _cli(str(tmp_path / "x.npy"), f"s3://{bucket}/in/x.npy")
    r = _cli(f"s3://{bucket}/in/*.npy", f"s3://{bucket}/out/", "--to", "parquet", "--jobs", "1")
    assert r.exit_code == 0, r.output
    assert sorted(fs.ls(f"{bucket}/out", detail=False)) == [f"{bucket}/out/x.parquet",
                                                           f"{bucket}/out/y.parquet"]


def test_installed_cli_subprocess_errors(s3, tmp_path, monkeypatch):
    """The installed CLI: a missing key and bad credentials are one line, exit 1."""
    fs, bucket = s3
    exe = os.path.join(os.path.dirname(sys.executable), "mlconv")
    if not os.path.exists(exe):
        pytest.skip("mlconv is not installed in this environment")
    env = dict(os.environ)
    p = subprocess.run([exe, "inspect", f"s3://{bucket}/none.npy"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    assert p.stderr.strip() == f"mlconv: error: no such file (or bucket) (s3://{bucket}/none.npy)"
    np.save(tmp_path / "x.npy", np.arange(3))
    p = subprocess.run([exe, str(tmp_path / "x.npy"), f"s3://{bucket}/x.npz"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    p = subprocess.run([exe, "inspect", f"s3://{bucket}/x.npz"], env=env,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mlconv: error: ") and \
        f"s3://{bucket}/x.npz" in lines[0], p.stderr


def test_missing_fsspec_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "fsspec", None)
    monkeypatch.setitem(sys.modules, "fsspec.core", None)
    from mlconv.errors import MissingDependencyError

    with pytest.raises(MissingDependencyError, match=r"pip install 'mlconv\[remote\]'"):
        mlconv.inspect("s3://bucket/x.npy")


def test_unknown_protocol_package_names_the_extra():
    from mlconv.errors import MissingDependencyError

    try:
        import gcsfs  # noqa: F401
        pytest.skip("gcsfs is installed")
    except ImportError:
        pass
    with pytest.raises(MissingDependencyError, match=r"mlconv\[remote\]"):
        mlconv.inspect("gs://bucket/x.npy")


def test_local_paths_never_import_fsspec(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(3))
    code = ("import sys, mlconv; mlconv.inspect(sys.argv[1]); "
            "mlconv.convert(sys.argv[1], sys.argv[1] + '.npz'); "
            "assert 'fsspec' not in sys.modules, 'fsspec imported'")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "x.npy")], check=True,
                   timeout=120)


def test_dataset_over_remote_shards(mem, tmp_path):
    fs, root = mem
    for i in range(3):
        np.save(tmp_path / f"s{i}.npy", np.arange(i * 4, i * 4 + 4))
        fs.put_file(str(tmp_path / f"s{i}.npy"), f"{root}/s{i}.npy")
    ds = mlconv.dataset(f"memory://{root}/s*.npy")
    assert len(ds) == 12
    assert [int(np.asarray(ds[i]["s0"] if isinstance(ds[i], dict) else ds[i]).reshape(-1)[0])
            for i in (0, 5, 11)] == [0, 5, 11]


def test_load_fetches_tensors_when_asked(mem, tmp_path):
    """``load`` of a remote safetensors file reads the header; each tensor's bytes come
    when first used; writing the bundle elsewhere gives the exact values."""
    fs, root = mem
    big = np.arange(4_000_000, dtype=np.float32)
    fs.pipe_file(f"{root}/m.safetensors", _safetensors({"big": big, "b": np.arange(3)}))
    stats = _count()
    with mlconv.open(f"memory://{root}/m.safetensors") as bundle:
        assert stats["bytes"] <= storage.HEAD
        assert bundle["b"].numpy().tolist() == [0, 1, 2]
        assert stats["bytes"] <= storage.HEAD
        mlconv.save(bundle, tmp_path / "out.safetensors")
        assert stats["bytes"] < big.nbytes + 2 * storage.HEAD
    from safetensors.numpy import load_file

    assert np.array_equal(load_file(tmp_path / "out.safetensors")["big"], big)


def test_convert_select_fetches_only_what_it_writes(mem, tmp_path):
    fs, root = mem
    big = np.arange(4_000_000, dtype=np.float32)
    small = np.arange(5, dtype=np.int16)
    fs.pipe_file(f"{root}/m.safetensors", _safetensors({"big": big, "small": small}))
    stats = _count()
    mlconv.convert(f"memory://{root}/m.safetensors", tmp_path / "small.npy", select=["small"])
    assert stats["bytes"] <= storage.HEAD + small.nbytes  # the header, then 10 bytes
    assert np.load(tmp_path / "small.npy").tolist() == small.tolist()
    stats = _count()
    mlconv.convert(f"memory://{root}/m.safetensors", f"memory://{root}/all.safetensors")
    with mlconv.open(f"memory://{root}/all.safetensors") as b:
        assert np.array_equal(b["big"].numpy(), big)
        assert b["small"].numpy().tolist() == small.tolist()


def test_http_read_only(tmp_path):
    """http(s):// reads (a server that ignores Range requests still gives the right
    bytes); writing there is refused as read-only."""
    import functools
    import http.server
    import threading

    pytest.importorskip("aiohttp")
    (tmp_path / "m.safetensors").write_bytes(_safetensors({"w": np.arange(1000.0)}))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert mlconv.inspect(f"{base}/m.safetensors")["entries"][0]["shape"] == [1000]
        with mlconv.open(f"{base}/m.safetensors") as b:
            assert b["w"].numpy().tolist() == list(np.arange(1000.0))
        with pytest.raises(SourceNotFoundError):
            mlconv.inspect(f"{base}/none.npy")
        with pytest.raises(MlconvError, match="read-only"):
            mlconv.save({"w": np.arange(3)}, f"{base}/x.npy")
    finally:
        server.shutdown()
        server.server_close()


def test_template_and_onnx_external_data_remote(mem, tmp_path):
    """--template from a URL; ONNX output with a side file uploads both, named alike."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    fs, root = mem
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph), tmp_path / "t.onnx")
    fs.put_file(str(tmp_path / "t.onnx"), f"{root}/t.onnx")
    (tmp_path / "w.safetensors").write_bytes(_safetensors({"w": w * 2}))
    r = CliRunner().invoke(cli, [str(tmp_path / "w.safetensors"), f"memory://{root}/o.onnx",
                                 "--template", f"memory://{root}/t.onnx", "--external-data"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False))
    assert names[0] == "o.onnx" and len(names) == 3 and "t.onnx" in names  # + the side file
    with mlconv.open(f"memory://{root}/o.onnx") as b:
        assert np.array_equal(b["w"].numpy(), w * 2)


def test_onnx_inspect_fetches_structure_not_raw_data(mem, tmp_path):
    """A ~50 MB model with raw_data initializers: inspect scans the protobuf through ranged
    reads and skips every payload (< 1 MiB fetched); load fetches a tensor when used."""
    fs, root = mem
    rng = np.random.default_rng(0)
    tensors = {f"layer{i}/w": rng.random((250, 500), dtype=np.float32) for i in range(100)}
    local = tmp_path / "m.onnx"
    mlconv.save(tensors, local, format="onnx", metadata={"k": "v"})
    assert local.stat().st_size > 50_000_000
    fs.put_file(str(local), f"{root}/m.onnx")
    stats = _count()
    remote = mlconv.inspect(f"memory://{root}/m.onnx")
    assert stats["bytes"] < 1 << 20, stats
    assert {**remote, "path": None} == {**mlconv.inspect(local), "path": None}
    stats = _count()
    with mlconv.open(f"memory://{root}/m.onnx") as b:
        assert np.array_equal(b["layer7/w"].numpy(), tensors["layer7/w"])
    assert stats["bytes"] < (1 << 20) + tensors["layer7/w"].nbytes, stats
    stats = _count()  # a conversion fetches the tensors it writes, each byte once
    mlconv.convert(f"memory://{root}/m.onnx", tmp_path / "one.safetensors", select=["layer7/w"])
    assert stats["bytes"] < (1 << 20) + tensors["layer7/w"].nbytes, stats
    stats = _count()
    mlconv.convert(f"memory://{root}/m.onnx", tmp_path / "all.safetensors")
    assert stats["bytes"] <= local.stat().st_size * 1.1, stats
    from safetensors.numpy import load_file

    assert load_file(tmp_path / "all.safetensors")["layer7/w"].tobytes() == \
        tensors["layer7/w"].tobytes()


def test_remote_losses_keep_their_data(mem, tmp_path):
    """Review finding: nulls filled while a remote conversion streams crashed the report
    (plain strings among the Loss objects); each loss keeps kind and way out."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, root = mem
    local = tmp_path / "t.parquet"
    pq.write_table(pa.table({"x": pa.array([1.0, None, 3.0])}), local)
    fs.put_file(str(local), f"{root}/t.parquet")
    report = mlconv.convert(f"memory://{root}/t.parquet", tmp_path / "o.npz", allow_lossy=True)
    assert [w.kind for w in report.warnings] == ["nulls"]
    assert f"memory://{root}/t.parquet" in str(report.warnings[0])


def test_remote_corrupt_arrow_footer_is_a_format_error(mem, tmp_path):
    """Review finding: a corrupt IPC footer raised BufferError from the header fetch."""
    import pyarrow as pa

    fs, root = mem
    local = tmp_path / "x.arrow"
    with pa.ipc.new_file(local, pa.schema([("a", pa.int64())])) as w:
        w.write_batch(pa.record_batch([pa.array(np.arange(1000))], names=["a"]))
    data = bytearray(local.read_bytes())
    n = int.from_bytes(data[-10:-6], "little")
    for i in range(len(data) - 10 - n, len(data) - 10, 3):  # scribble over the footer
        data[i] ^= 0x5A
    fs.pipe(f"{root}/x.arrow", bytes(data))
    (tmp_path / "bad.arrow").write_bytes(bytes(data))
    with pytest.raises(MlconvError) as here:
        mlconv.inspect(tmp_path / "bad.arrow")
    with pytest.raises(MlconvError) as remote:
        mlconv.inspect(f"memory://{root}/x.arrow")
    assert type(remote.value) is type(here.value)


def test_temp_folder_of_a_killed_process_is_swept(tmp_path, monkeypatch):
    """A process killed while staging a remote DST (a Dask worker) leaves its temp folder;
    the next process to stage anything removes it. A live owner's folder is left alone."""
    import signal
    import tempfile
    import time

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    code = ("import sys, time, numpy as np, mlconv\n"
            "from mlconv import storage\n"
            "with storage.staged(None, 'memory://x/y.npy') as (_, out, _n):\n"
            "    np.save(out, np.zeros(1000))\n"
            "    print('in', flush=True)\n"
            "    time.sleep(600)\n")
    children = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                 env={**os.environ, "TMPDIR": str(tmp_path)})
                for _ in range(2)]
    try:
        for child in children:
            assert child.stdout.readline() == b"in\n"
        folders = sorted(p for p in tmp_path.iterdir() if p.name.startswith("mlconv-remote-"))
        assert len(folders) == 2
        children[0].send_signal(signal.SIGKILL)
        children[0].wait()
        monkeypatch.setattr(storage, "_swept", [])
        mlconv.save({"w": np.arange(3)}, "memory://x/z.npy")  # any staging sweeps once
        time.sleep(0.1)
        left = sorted(p for p in tmp_path.iterdir() if p.name.startswith("mlconv-remote-"))
        assert len(left) == 1 and (left[0] / "y.npy").exists()  # the live one's
    finally:
        for child in children:
            child.kill()
            child.wait()
        fsspec.filesystem("memory").rm("/x", recursive=True)


def test_remote_dst_created_meanwhile_is_not_replaced(s3, tmp_path):
    """The existence check and the upload are apart in time; on S3 the upload is a
    conditional PUT (If-None-Match: *), so an object written meanwhile by someone else is
    kept and the run fails with one line."""
    fs, bucket = s3
    url = f"s3://{bucket}/x.npy"
    with pytest.raises(OutputExistsError) as e:
        with storage.staged(None, url) as (_, out, _names):
            np.save(out, np.arange(3))
            fs.pipe_file(f"{bucket}/x.npy", b"theirs")  # another writer, meanwhile
    assert url in str(e.value) and "\n" not in str(e.value)
    fs.invalidate_cache()
    assert fs.cat_file(f"{bucket}/x.npy") == b"theirs"


def _big_remote(kind: str, tmp_path):
    """(local file, its part of interest in bytes, select, exclude, target) of ~32 MB:
    four 8 MB float64 columns (Parquet, Arrow IPC) or eight 4 MB members (npz)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    local = tmp_path / f"t.{kind.split('-')[0]}"
    if kind.startswith("npz"):
        arrs = {f"w{i}": rng.random(500_000) for i in range(8)}
        (np.savez_compressed if kind == "npz-deflate" else np.savez)(local, **arrs)
        return local, arrs["w3"].nbytes, ["w3"], [], "npy"
    table = pa.table({c: rng.random(1_000_000) for c in "abcd"})
    if kind == "parquet":
        pq.write_table(table, local, row_group_size=125_000, compression="none")
        meta = pq.ParquetFile(local).metadata
        part = sum(meta.row_group(i).column(0).total_compressed_size  # column a's chunks
                   for i in range(meta.num_row_groups))
        return local, part, [], ["t/b", "t/c", "t/d"], "parquet"
    else:
        with pa.ipc.new_file(local, table.schema) as w:
            for batch in table.to_batches(125_000):
                w.write_batch(batch)
    return local, table["a"].nbytes, [], ["t/b", "t/c", "t/d"], "parquet"


@pytest.mark.parametrize("kind", ["parquet", "arrow", "npz", "npz-deflate"])
def test_ranged_reads_fetch_what_is_converted(mem, tmp_path, kind):
    """Parquet column chunks, Arrow IPC record batch buffers and npz members are fetched
    when read: one column (or member) of a 32 MB object costs little more than its own
    bytes; converting the whole object fetches each byte about once. Outputs equal the
    local run's."""
    fs, root = mem
    local, part, select, exclude, target = _big_remote(kind, tmp_path)
    url = f"memory://{root}/{local.name}"
    fs.put_file(str(local), url)
    stats = _count()
    mlconv.convert(url, tmp_path / f"one.{target}", select=select, exclude=exclude)
    assert part <= stats["bytes"] < part * 1.1 + 2 * storage.HEAD, stats
    mlconv.convert(local, tmp_path / f"here.{target}", select=select, exclude=exclude)
    assert (tmp_path / f"one.{target}").read_bytes() == \
        (tmp_path / f"here.{target}").read_bytes()
    stats = _count()
    out = tmp_path / f"all{local.suffix}"
    mlconv.convert(url, out)
    assert 0.99 * local.stat().st_size <= stats["bytes"] < 1.1 * local.stat().st_size, stats
    mlconv.convert(local, tmp_path / f"all-here{local.suffix}")
    assert out.read_bytes() == (tmp_path / f"all-here{local.suffix}").read_bytes()


def _writable():
    from mlconv.formats import all_formats

    return [f for f in all_formats() if f.can_write]


def _uploaded(put, prefix: str, tmp_path, fmt, count: int):
    """``count`` float32 values saved as ``fmt`` and put at ``prefix``/x.ext: (values, URL)."""
    values = np.arange(count, dtype=np.float32)
    local = tmp_path / f"x{fmt.extensions[0]}"
    mlconv.save({"x": values}, local)
    put(str(local), f"{prefix}/{local.name}")
    return values, f"{prefix}/{local.name}"


def _entry_values(entry):
    """Every value of a tensor, or of a one-column table, flat."""
    if hasattr(entry, "batches"):
        import pyarrow as pa

        return pa.Table.from_batches(list(entry.batches(1000)), entry.schema).column(0) \
            .to_numpy().reshape(-1)
    return entry.numpy().reshape(-1)


@pytest.mark.parametrize("fmt", _writable(), ids=lambda f: f.id)
def test_an_entry_outlives_its_remote_bundle(mem, tmp_path, fmt):
    """``load(url)["x"]`` drops the bundle at once: the entry keeps the local copy alive
    and reads the exact values (it read a closed descriptor, a deleted file or, for Arrow
    IPC, zeros where nothing was fetched yet). The copy goes with the last entry."""
    import gc

    fs, root = mem
    values, url = _uploaded(fs.put_file, f"memory://{root}", tmp_path, fmt, 200_000)
    name = next(iter(mlconv.load(tmp_path / url.rsplit("/", 1)[1])))
    entry = mlconv.load(url)[name]
    gc.collect()
    assert np.array_equal(_entry_values(entry), values)
    copy = entry.held[0]
    removed = copy._remove
    assert removed.alive
    del entry, copy
    gc.collect()
    assert not removed.alive  # the copy's folder is gone with the last entry


@pytest.mark.parametrize("fmt", _writable(), ids=lambda f: f.id)
def test_reading_after_close_is_a_clear_error(s3, tmp_path, fmt):
    """After ``close()`` (or the ``with`` block), an entry of a remote bundle, or a cast
    or projection made from it, refuses to read with an error naming the file and entry;
    arrays taken before close keep their values."""
    fs, bucket = s3
    values, url = _uploaded(fs.put, f"s3://{bucket}", tmp_path, fmt, 50_000)
    with mlconv.open(url) as bundle:
        name = next(iter(bundle))
        entry = bundle[name]
        before = _entry_values(entry)
        made = entry.project([entry.columns[0][0]]) if hasattr(entry, "batches") else \
            entry.cast(mlconv.DType("float64"))
    assert np.array_equal(before, values)
    for e in (entry, made):
        with pytest.raises(MlconvError) as err:
            _entry_values(e)
        assert "closed" in str(err.value) and url in str(err.value) and \
            f":{name}" in str(err.value)
    if not hasattr(entry, "batches"):
        with pytest.raises(MlconvError):
            list(entry.chunks())
        with pytest.raises(MlconvError):
            mlconv.save({"y": entry}, tmp_path / "y.safetensors")


def test_remote_quantized_gguf_to_gguf_is_exact(mem, tmp_path):
    """GGML blocks of a remote file are fetched by a wrapper around their source; the GGUF
    writer recognised blocks by class and refused them ("GGUF cannot hold bytes")."""
    gguf = pytest.importorskip("gguf")
    from tests.test_gguf import gg_write

    fs, root = mem
    w32 = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    q8 = gguf.GGMLQuantizationType.Q8_0
    src = gg_write(tmp_path / "q.gguf", [("blk.0.q8", gguf.quants.quantize(w32, q8), q8),
                                         ("blk.0.f32", w32, None)], {})
    fs.put_file(str(src), f"{root}/q.gguf")
    mlconv.convert(src, tmp_path / "here.gguf")
    mlconv.convert(f"memory://{root}/q.gguf", tmp_path / "there.gguf")
    assert (tmp_path / "there.gguf").read_bytes() == (tmp_path / "here.gguf").read_bytes()


@pytest.mark.parametrize("ext", [".safetensors", ".npy", ".npz"])
def test_dataset_rows_of_a_remote_shard(mem, tmp_path, ext):
    """Single rows of a remote shard whose tensors are fetched on first use: the fast row
    reader mapped the copy before anything was fetched, so rows came back as zeros."""
    fs, root = mem
    values = np.arange(200_000, dtype=np.float32).reshape(2000, 100) + 1
    local = tmp_path / f"d{ext}"
    if ext == ".npy":
        np.save(local, values)
    else:
        mlconv.save({"x": values}, local)
    fs.put_file(str(local), f"{root}/d{ext}")
    ds = mlconv.dataset(f"memory://{root}/d{ext}")
    key = next(iter(ds[0]))
    for i in (1500, 7, 1999):
        assert np.array_equal(ds[i][key], values[i])
    assert np.array_equal(ds[[3, 1500]][key], values[[3, 1500]])


def test_a_copied_remote_entry_is_closed_with_its_bundle(mem, tmp_path):
    """``copy.deepcopy`` of an entry shares its bundle's local copy: it keeps it alive, and
    after ``close()`` refuses to read like the entry itself (it read a deleted file)."""
    import copy

    fs, root = mem
    local = tmp_path / "p.h5"
    mlconv.save({"x": np.arange(10.0)}, local)
    fs.put_file(str(local), f"{root}/p.h5")
    bundle = mlconv.load(f"memory://{root}/p.h5")
    twin = copy.deepcopy(bundle["x"])
    assert twin.numpy().tolist() == list(range(10))
    bundle.close()
    with pytest.raises(MlconvError, match="closed"):
        twin.numpy()
