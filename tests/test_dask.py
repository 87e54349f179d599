"""Many-file conversions on Dask (issue 15): a LocalCluster of 2 worker processes on
loopback gives the same outputs as the local run, a poison file fails alone, and a worker
killed mid-run loses nothing, half-writes nothing and duplicates nothing."""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import pytest
from click.testing import CliRunner

distributed = pytest.importorskip("distributed")

import mlconv  # noqa: E402
from mlconv.cli.main import cli  # noqa: E402
from mlconv.convert.many import iter_convert_many  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


def _shards(folder, n=6, rows=2000):
    import h5py

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        with h5py.File(folder / f"s{i:02d}.h5", "w") as f:
            f["x"] = rng.random((rows, 8))
            f["y"] = np.arange(rows, dtype=np.int64) + i
    return sorted(str(p) for p in folder.iterdir())


def _tree(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_dask_outputs_identical_to_local(client, tmp_path):
    files = _shards(tmp_path / "in")
    (tmp_path / "local").mkdir()
    (tmp_path / "dask").mkdir()
    local = mlconv.convert_many(files, tmp_path / "local", to="parquet", jobs=1)
    remote = mlconv.convert_many(str(tmp_path / "in" / "*.h5"), tmp_path / "dask",
                                 to="parquet", client=client)
    assert all(r.ok for r in local + remote)
    assert [r.src for r in remote] == files  # the list keeps the order of the sources
    assert _tree(tmp_path / "local") == _tree(tmp_path / "dask")  # byte for byte
    assert len(_tree(tmp_path / "dask")) == len(files)


def test_poison_file_fails_alone(client, tmp_path):
    files = _shards(tmp_path / "in", n=4)
    poison = tmp_path / "in" / "s99.h5"
    poison.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\xff" * 500)
    (tmp_path / "out").mkdir()
    results = mlconv.convert_many(files + [str(poison)], tmp_path / "out", to="parquet",
                                  client=client)
    bad = [r for r in results if not r.ok]
    assert [r.src for r in bad] == [str(poison)]
    assert str(poison) in bad[0].error.render()
    assert sorted(os.listdir(tmp_path / "out")) == [f"s{i:02d}.parquet" for i in range(4)]


def test_existing_output_refused_without_force(client, tmp_path):
    files = _shards(tmp_path / "in", n=2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "s00.parquet").write_bytes(b"mine")
    results = mlconv.convert_many(files, tmp_path / "out", to="parquet", client=client)
    assert [r.ok for r in results] == [False, True]
    assert "exists" in results[0].error.message
    assert (tmp_path / "out" / "s00.parquet").read_bytes() == b"mine"


def test_worker_killed_mid_run(tmp_path):
    """A worker process killed while converting: its files run again elsewhere; every
    output is complete and equal to the local run's; no temp file or extra file is left."""
    files = _shards(tmp_path / "in", n=10, rows=200_000)
    (tmp_path / "local").mkdir()
    (tmp_path / "dask").mkdir()
    assert all(r.ok for r in mlconv.convert_many(files, tmp_path / "local", to="parquet",
                                                 jobs=1))
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
    c = distributed.Client(cluster)
    try:
        pids = list(c.run(os.getpid).values())
        killed = []

        def kill_when_busy():
            import time

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not killed:
                busy = [w for w, tasks in c.processing().items() if tasks]
                if busy:
                    pid = c.run(os.getpid, workers=[busy[0]])[busy[0]]
                    time.sleep(0.2)  # let it get into the conversion
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                time.sleep(0.05)

        t = threading.Thread(target=kill_when_busy)
        t.start()
        results = list(iter_convert_many(files, tmp_path / "dask", to_format="parquet",
                                         client=c))
        t.join()
    finally:
        c.close()
        cluster.close()
    assert killed and killed[0] in pids
    assert sorted(r.src for r in results) == files  # each file once
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert _tree(tmp_path / "dask") == _tree(tmp_path / "local")


def test_cli_dask_local(tmp_path):
    _shards(tmp_path / "in", n=3)
    (tmp_path / "out").mkdir()
    r = CliRunner().invoke(cli, [str(tmp_path / "in" / "*.h5"), str(tmp_path / "out") + "/",
                                 "--to", "parquet", "--dask", "local:2"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "3 converted, 0 failed" in r.output
    assert sorted(os.listdir(tmp_path / "out")) == ["s00.parquet", "s01.parquet",
                                                    "s02.parquet"]
    r = CliRunner().invoke(cli, [str(tmp_path / "in" / "s00.h5"), str(tmp_path / "x.parquet"),
                                 "--dask", "local"], catch_exceptions=False)
    assert r.exit_code == 2


def _big_safetensors(path, n=6):
    rng = np.random.default_rng(1)
    tensors = {f"w{i}": rng.random((500, 1000)).astype(np.float32) for i in range(n)}
    mlconv.save({**tensors, "b": np.arange(7)}, path, metadata={"k": "v"})  # 2 MB each


def _kinds(client, run):
    """What ``run()`` submitted: the kinds of task keys (convert, part, publish) counted."""
    from collections import Counter

    with distributed.get_task_stream(client) as ts:
        result = run()
    return result, Counter(t["key"].split("-")[1] for t in ts.data)


@pytest.mark.parametrize("to", ["safetensors", "gguf", "npz"])
def test_large_file_split_into_tensor_ranges(client, tmp_path, to):
    """A file over --split-size into a target that lays payloads out verbatim is written
    by one task per range of tensors plus a publishing task; the output is byte for byte
    the local run's. Other targets (npz: zip members) run as one task."""
    (tmp_path / "in").mkdir()
    _big_safetensors(tmp_path / "in" / "m.safetensors")
    (tmp_path / "local").mkdir()
    (tmp_path / "dask").mkdir()
    src = [str(tmp_path / "in" / "m.safetensors")]
    lossy = to == "npz"  # the file metadata
    assert mlconv.convert_many(src, tmp_path / "local", to=to, jobs=1, allow_lossy=lossy)[0].ok
    results, kinds = _kinds(client, lambda: mlconv.convert_many(
        src, tmp_path / "dask", to=to, client=client, split_size=3 << 20, allow_lossy=lossy))
    assert [r.ok for r in results] == [True], results[0].error
    if to == "npz":
        assert kinds == {"convert": 1}
    else:
        assert kinds == {"part": 4, "publish": 1}  # 2+2, 2+2, 2+2 MB, then b
        assert results[0].report.bytes_written == os.path.getsize(results[0].dst)
    assert _tree(tmp_path / "dask") == _tree(tmp_path / "local")


def test_split_part_killed_is_rerun(tmp_path):
    """A worker dies while writing its range of a split file (after scribbling over it):
    the part runs again, the output equals the local run's, no temp file is left."""
    (tmp_path / "in").mkdir()
    _big_safetensors(tmp_path / "in" / "m.safetensors")
    (tmp_path / "local").mkdir()
    (tmp_path / "dask").mkdir()
    src = [str(tmp_path / "in" / "m.safetensors")]
    assert mlconv.convert_many(src, tmp_path / "local", to="safetensors", jobs=1)[0].ok
    marker = tmp_path / "killed"

    def die_once():  # in each worker: the first part written anywhere kills its worker
        from mlconv.convert import many

        real = many._write_part

        def dies(task):
            try:
                fd = os.open(str(marker), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return real(task)
            os.close(fd)
            _, tmp, group, _ = task
            with open(tmp, "r+b") as f:  # half-written garbage, then gone
                f.seek(group[0][1])
                f.write(b"\xff" * (group[0][2] // 2))
            os._exit(9)

        many._write_part = dies

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address="127.0.0.1:0")
    c = distributed.Client(cluster)
    try:
        c.run(die_once)
        results = mlconv.convert_many(src, tmp_path / "dask", to="safetensors", client=c,
                                      split_size=3 << 20)
    finally:
        c.close()
        cluster.close()
    assert marker.exists()
    assert [r.ok for r in results] == [True], results[0].error
    assert _tree(tmp_path / "dask") == _tree(tmp_path / "local")  # and no temp file


def test_cli_split_size(tmp_path):
    r = CliRunner().invoke(cli, [str(tmp_path / "x.h5"), str(tmp_path) + "/", "--to",
                                 "parquet", "--dask", "local:1", "--split-size", "lots"],
                           catch_exceptions=False)
    assert r.exit_code == 2 and "--split-size" in r.output


def test_dask_reads_and_writes_s3_without_a_shared_disk(client, tmp_path, monkeypatch):
    """Sources and destination on S3 (moto's server on loopback): the workers reach it the
    usual way (AWS_* variables) and the outputs equal the local run's, byte for byte."""
    import socket

    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def set_env(values=env):
        os.environ.update(values)
        s3fs.S3FileSystem.clear_instance_cache()

    def unset_env(keys=tuple(env)):
        for k in keys:
            os.environ.pop(k, None)
        s3fs.S3FileSystem.clear_instance_cache()

    client.run(set_env)
    try:
        s3fs.S3FileSystem.clear_instance_cache()
        fs = s3fs.S3FileSystem()
        fs.mkdir("shards")
        files = _shards(tmp_path / "in", n=3)
        for f in files:
            fs.put_file(f, f"shards/in/{os.path.basename(f)}")
        (tmp_path / "local").mkdir()
        local = mlconv.convert_many(files, tmp_path / "local", to="parquet", jobs=1)
        remote = mlconv.convert_many("s3://shards/in/*.h5", "s3://shards/out/", to="parquet",
                                     client=client)
        assert all(r.ok for r in local + remote), [r.error for r in remote if not r.ok]
        assert sorted(fs.ls("shards/out", detail=False)) == [
            f"shards/out/{name}" for name in sorted(_tree(tmp_path / "local"))]
        for name, data in _tree(tmp_path / "local").items():
            assert fs.cat_file(f"shards/out/{name}") == data
    finally:
        client.run(unset_env)
        s3fs.S3FileSystem.clear_instance_cache()
        server.stop()
