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
4. The index's growth: synthetic images written through the coordinator's own writes (raw tags,
   keywords by the default rules, the file row), one transaction per image as a scan commits,
   then the file's size per image.

Everything runs on 127.0.0.1; every process started is stopped.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import pickle
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
    from tagger.engine.labels import Tag
    from tagger.cluster.protocol import Classified, JobResult

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


def fresh(folder: Path) -> None:
    for sidecar in folder.rglob("*.tags.json"):
        sidecar.unlink()
    for index in folder.parent.glob("index.sqlite*"):
        index.unlink()


def payloads(config_path: Path, library: list[Path]) -> None:
    from tagger.engine.classify import Classifier
    from tagger.config import load_config
    from tagger.engine.decode import decode_array, draft_size

    config = load_config(config_path)
    spec = Classifier.from_settings(config.model_choice()).spec.preprocess
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


def timed_scan(config: Path, *extra: str) -> tuple[float, float, float, str]:
    """Wall seconds, CPU seconds and peak MB of one `tagger scan` process, and what it printed."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen([str(BIN / "tagger"), "--config", str(config), "scan", *extra],
                                   stdout=out, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - started
        if process.returncode != 0:
            raise SystemExit(f"tagger scan {' '.join(extra)} failed: exit {process.returncode}")
        out.seek(0)
        text = out.read().decode()
    return seconds, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60)
    parser.add_argument("--size", default="4000x3000")
    parser.add_argument("--stub-rounds", type=int, default=3, help="scans of the library against stub workers")
    parser.add_argument("--index-images", type=int, default=20_000, help="images written in part 4 (0: skip)")
    parser.add_argument("--only-index", action="store_true", help="part 4 alone")
    args = parser.parse_args()
    if args.only_index:
        index_growth(args.index_images)
        return
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
        empty = work / "empty"
        empty.mkdir()
        n = len(library)
        for name, extra in (("local", []), ("cluster", ["--cluster", address])):
            start_s, start_cpu, _, _ = timed_scan(config, *extra, str(empty))  # start-up, imports, model load
            fresh(lib)
            scan_s, scan_cpu, peak, out = timed_scan(config, *extra)
            per_image = 1000 * (scan_cpu - start_cpu) / n
            print(f"   {name:8s} {n / (scan_s - start_s):6.1f} images/s, coordinator CPU {per_image:6.1f} ms/image "
                  f"(start-up, {start_cpu:.1f} s CPU, taken off), peak {peak:.0f} MB")
            if extra:
                print(f"            {out.splitlines()[1]}  (2 tagger workers on this same machine)")

        stub_ceiling(config, address, lib, args.stub_rounds)
        if args.index_images:
            index_growth(args.index_images)
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

    from tagger.engine.classify import Classifier
    from tagger.config import load_config
    from tagger.cluster.backend import ClusterBackend
    from tagger.cluster.choice import scan_backend
    from tagger.library.recorder import Recorder
    from tagger.library.scan import Tagger
    from tagger.index import Index

    config = load_config(config_path)
    config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, scheduler=address))
    classifier = Classifier.from_settings(config.model_choice())
    print("3. the coordinator's ceiling: STUB WORKERS (2 workers answering at once; sidecars + index written)")
    writing = [0.0]
    record = Recorder.record

    def timed_record(self: Recorder, *args: Any, **kwargs: Any) -> bool:
        started = time.monotonic()
        try:
            return record(self, *args, **kwargs)
        finally:
            writing[0] += time.monotonic() - started

    Recorder.record = timed_record  # type: ignore[method-assign]
    runs = [(f, True) for f in (2, 8, 32)] + [(8, False)]
    for in_flight, sidecars in runs:
        cfg = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster, in_flight=in_flight),
                                  sidecar=dataclasses.replace(config.sidecar, enabled=sidecars))
        images = 0
        cpu = seconds = 0.0
        writing[0] = 0.0
        for _ in range(rounds):
            fresh(lib)
            with Index.open(cfg.index) as store:
                tagger = Tagger(cfg, classifier, store, scan_backend(cfg.cluster))
                assert isinstance(tagger.backend, ClusterBackend)
                tagger.backend.cluster.task = stub_classify
                started_cpu, started = time.process_time(), time.monotonic()
                summary = tagger.scan([lib])
                seconds += time.monotonic() - started
                cpu += time.process_time() - started_cpu
                tagger.close()
            assert summary.classified_here == 0, summary
            images += summary.classified
        print(f"   in_flight {in_flight:3d} x batch {cfg.cluster.batch_size}, sidecars {'on ' if sidecars else 'off'}: "
              f"{images / seconds:6.1f} images/s, coordinator CPU {1000 * cpu / images:5.1f} ms/image; "
              f"writing (sidecar + index row) {1000 * writing[0] / images:5.1f} ms/image of {1000 * seconds / images:5.1f}")


def index_growth(count: int) -> None:
    import numpy as np

    from tagger.tags.keywords import keyword_rows
    from tagger.engine.labels import Tag, imagenet_classes
    from tagger.tags.rules import Rules
    from tagger.index.records import ImageFacts
    from tagger.index import Index

    rng = np.random.default_rng(1)
    classes = imagenet_classes()
    popularity = 1.0 / np.arange(1, 1001) ** 1.1
    draws = rng.permutation(1000)[rng.choice(1000, size=(count, 12), p=popularity / popularity.sum())]
    with tempfile.TemporaryDirectory(prefix="bench-index-") as folder:
        path = Path(folder) / "index.sqlite"
        rules = Rules.load(None)  # the shipped rules
        with Index.open(path) as store:
            started = time.monotonic()
            for i in range(count):
                chosen = list(dict.fromkeys(int(c) for c in draws[i]))[:5]
                scores = np.sort(rng.dirichlet(np.ones(6) * 0.5))[::-1][:5]
                tags = [Tag(c, classes[c].wnid, classes[c].label, classes[c].label_zh, float(s))
                        for c, s in zip(chosen, scores)]
                sha = os.urandom(32).hex()
                facts = ImageFacts(sha, 3_000_000, 4000, 3000)
                keywords = keyword_rows(rules, tags, 0.05, [])
                with store.transaction():
                    store.save_image(facts, "efficientnet-lite0", "ab" * 32, tags)
                    store.save_keywords(sha, keywords)
                    store.save_file(f"/photos/{i // 1000:04d}/IMG_{i:07d}.jpg", sha, 3_000_000, i, None, None)
            seconds = time.monotonic() - started
        size = sum(p.stat().st_size for p in Path(folder).glob("index.sqlite*"))
    print(f"4. the index: {count:,} images, one transaction each: {count / seconds:,.0f} images/s written, "
          f"{size / count:,.0f} bytes per image on disk")


if __name__ == "__main__":
    main()
