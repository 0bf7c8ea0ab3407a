"""Benchmark the cluster path against the local one, in one run, on real-size photos.

    .venv/bin/python bench/bench_cluster.py --count 60 --size 4000x3000

1. Bytes or decoded arrays? What the coordinator pays per image for each payload (read + hash,
   + draft decode for arrays) and how many bytes each puts on the network.
2. Cost per image, same library, same run: `tagger scan` (local) against `tagger scan --cluster`
   with two real `tagger worker` processes on this machine. The workers share its cores, so the
   wall time is no speed-up figure; the coordinator's own CPU per image is the one that counts.
3. The coordinator's ceiling: STUB WORKERS (the same workers, sent a stub task that answers at
   once with fixed tags instead of running the model). Images/s one coordinator reads, hashes, sends,
   receives and writes (sidecars and index) when the cluster costs nothing.

Everything runs on 127.0.0.1; every process started is stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
BIN = Path(sys.executable).parent


def stub_classify(job: Any) -> Any:
    """STUB: answers at once, the same tags for every image (defined here: Dask ships it by value)."""
    from tagger.labels import Tag
    from tagger.worker import Classified, JobResult

    tags = (Tag(967, "n07920052", "espresso", "意式浓缩咖啡", 0.9), Tag(968, "n07930864", "cup", "茶杯", 0.05))
    return JobResult("stub", tuple(Classified(4000, 3000, tags) for _ in job.blobs), 0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the scheduler did not start")


def wait_workers(address: str, count: int) -> None:
    from distributed import Client

    with Client(address, set_as_default=False, timeout=30) as client:
        client.wait_for_workers(count, timeout=120)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def fresh(folder: Path) -> None:
    for sidecar in folder.rglob("*.tags.json"):
        sidecar.unlink()
    for index in folder.parent.glob("index.sqlite*"):
        index.unlink()


def payloads(config_path: Path, library: list[Path]) -> None:
    from tagger.classify import Classifier
    from tagger.config import load_config
    from tagger.decode import decode_array, draft_size

    config = load_config(config_path)
    spec = Classifier.from_config(config).spec.preprocess
    draft = draft_size(spec, True)
    read_s = decode_s = 0.0
    bytes_sent = arrays_sent = 0
    for path in library:
        started = time.process_time()
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        read_s += time.process_time() - started
        started = time.process_time()
        array = decode_array(data, config.decode.max_pixels, spec, draft).array
        decode_s += time.process_time() - started
        bytes_sent += len(pickle.dumps(data, protocol=5))
        arrays_sent += len(pickle.dumps(array, protocol=5))
    n = len(library)
    print("1. payload per image (coordinator CPU, measured; bytes on the wire, pickled)")
    print(f"   file bytes:    read+hash {1000 * read_s / n:6.1f} ms CPU, {bytes_sent / n / 1e6:5.2f} MB sent")
    print(f"   draft arrays:  read+hash+decode {1000 * (read_s + decode_s) / n:6.1f} ms CPU, "
          f"{arrays_sent / n / 1e6:5.2f} MB sent")


def timed_scan(config: Path, *extra: str) -> tuple[float, float, str]:
    cpu = children_cpu()
    started = time.monotonic()
    result = subprocess.run([str(BIN / "tagger"), "--config", str(config), "scan", *extra],
                            capture_output=True, text=True, check=True)
    return time.monotonic() - started, children_cpu() - cpu, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--stub-rounds", type=int, default=3, help="scans of the library against stub workers")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    from sample_photos import distinct_views

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        lib = work / "lib"
        library = distinct_views(lib, args.count, (width, height))
        mb = sum(p.stat().st_size for p in library) / len(library) / 1e6
        print(f"library: {len(library)} JPEGs of {width}x{height}, {mb:.2f} MB each on average; "
              f"{os.cpu_count()} cores shared with other jobs")
        config = work / "tagger.yaml"
        cluster = {"batch_size": 4, "in_flight": 8}
        config.write_text(yaml.safe_dump({
            "folders": [str(lib)], "index": str(work / "index.sqlite"), "weights_dir": str(work / "weights"),
            "model": {"name": "efficientnet-lite0", "fallback": None}, "cluster": cluster,
        }))
        subprocess.run([str(BIN / "tagger"), "--config", str(config), "weights", "prepare"], check=True,
                       capture_output=True)
        payloads(config, library)

        port = free_port()
        address = f"tcp://127.0.0.1:{port}"
        log = (work / "cluster.log").open("ab")
        processes.append(subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port",
                                           str(port), "--no-dashboard"], stdout=log, stderr=log))
        wait_listening(port)
        for _ in range(2):
            processes.append(subprocess.Popen([str(BIN / "tagger"), "--config", str(config), "worker", address,
                                               "--host", "127.0.0.1"], stdout=log, stderr=log))
        wait_workers(address, 2)

        print("2. cost per image, same library, same run (efficientnet-lite0, draft decode; coordinator = the scan)")
        fresh(lib)
        local_s, local_cpu, _ = timed_scan(config)
        fresh(lib)
        remote_s, remote_cpu, out = timed_scan(config, "--cluster", address)
        n = len(library)
        print(f"   local:          {n / local_s:6.1f} images/s, coordinator CPU {1000 * local_cpu / n:6.1f} ms/image")
        print(f"   cluster (2 tagger workers on this same machine): {n / remote_s:6.1f} images/s, "
              f"coordinator CPU {1000 * remote_cpu / n:6.1f} ms/image")
        print(f"   {out.splitlines()[1]}")

        stub_ceiling(config, address, lib, args.stub_rounds)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        shutil.rmtree(work, ignore_errors=True)


def stub_ceiling(config_path: Path, address: str, lib: Path, rounds: int) -> None:
    import dataclasses

    from tagger.classify import Classifier
    from tagger.config import load_config
    from tagger.pipeline import Tagger
    from tagger.store import Store

    config = load_config(config_path)
    config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, scheduler=address))
    classifier = Classifier.from_config(config)
    print("3. the coordinator's ceiling: STUB WORKERS (2 workers answering at once; sidecars + index written)")
    for in_flight in (2, 8, 32):
        cfg = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, in_flight=in_flight))
        images = 0
        cpu = seconds = 0.0
        for _ in range(rounds):
            fresh(lib)
            with Store.open(cfg.index) as store:
                tagger = Tagger(cfg, classifier, store)
                assert tagger.cluster is not None
                tagger.cluster.task = stub_classify
                started_cpu, started = time.process_time(), time.monotonic()
                summary = tagger.scan([lib])
                seconds += time.monotonic() - started
                cpu += time.process_time() - started_cpu
                tagger.close()
            assert summary.classified_here == 0, summary
            images += summary.classified
        print(f"   in_flight {in_flight:3d} x batch {cfg.cluster.batch_size}: {images / seconds:6.1f} images/s, "
              f"coordinator CPU {1000 * cpu / images:5.1f} ms/image (read, hash, send, receive, write)")


if __name__ == "__main__":
    main()
