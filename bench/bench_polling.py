"""Benchmark polling (`watch.mode: polling`) on a big library: CPU per poll, peak memory, and how
long until a new photo is noticed.

Baseline in the same run: watchdog's PollingObserver as tagger used it before (a snapshot of every
file each poll), against tagger's FolderPoller (folder mtimes first; only changed folders listed).
The library: 300 distinct small JPEGs hard-linked under random names into FOLDERS folders of 100
(one inode per distinct photo: little disk, every file its own name), under /tmp/polling/, deleted
at the end. Each poller runs in its own process, so that its peak memory is its own.

    .venv/bin/python bench/bench_polling.py [--folders 3000] [--polls 3] [--interval 30]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = Path("/tmp/polling")
PER_FOLDER = 100
DISTINCT = 300


def build(library: Path, folders: int) -> int:
    import numpy as np
    from PIL import Image

    originals = WORK / "originals"
    originals.mkdir(parents=True)
    rng = np.random.default_rng(0)
    photos = []
    for i in range(DISTINCT):
        path = originals / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(path, quality=80)
        photos.append(path)
    names = random.Random(1)
    count = 0
    for f in range(folders):
        folder = library / f"{f // 100:03d}" / f"album-{f:05d}"
        folder.mkdir(parents=True)
        for _ in range(PER_FOLDER):
            os.link(photos[count % DISTINCT], folder / f"IMG_{names.getrandbits(48):012x}.jpg")
            count += 1
    past = time.time() - 3600  # an old library: no folder changed in the last seconds
    for dirpath, _, _ in os.walk(library):
        os.utime(dirpath, (past, past))
    return count


CHILD = r'''
import json, os, resource, shutil, sys, threading, time
from pathlib import Path
from watchdog.events import FileSystemEventHandler

kind, library, polls, interval = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])

def cpu():
    t = os.times()
    return t.user + t.system

def peak_mb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

seen = threading.Event()
class Handler(FileSystemEventHandler):
    def on_any_event(self, event):
        if str(event.src_path).endswith("new-photo.jpg"):
            seen.set()

started = cpu()
if kind == "watchdog":
    from watchdog.observers.polling import PollingObserver
    observer = PollingObserver(timeout=interval)
    observer.schedule(Handler(), str(library), recursive=True)
    emitter = next(iter(observer.emitters))
    emitter.on_thread_start()  # the first snapshot, as when the observer starts
    handler = Handler()
    def one_poll():  # one snapshot and diff (the emitter's loop), then the events to the handler (the observer's)
        emitter.queue_events(0)
        while not observer.event_queue.empty():
            event, _ = observer.event_queue.get()
            handler.dispatch(event)
else:
    from tagger.daemon.poller import FolderPoller
    poller = FolderPoller(interval)
    poller.add(library, Handler(), subfolders=True)
    one_poll = poller.poll
first = cpu() - started
halt = threading.Event()
def loop():  # what either thread does: wait the interval, poll
    while not halt.wait(interval):
        one_poll()
costs = []
for _ in range(polls):
    before, wall = cpu(), time.monotonic()
    one_poll()
    costs.append((cpu() - before, time.monotonic() - wall))
threading.Thread(target=loop, daemon=True).start()
time.sleep(1.0)
target = next(p for p in sorted(library.rglob("album-*")) if p.is_dir())
dropped = time.monotonic()
shutil.copy(next(target.iterdir()), target / "new-photo.jpg")
noticed = time.monotonic() - dropped if seen.wait(5 * interval + 600) else None
halt.set()
(target / "new-photo.jpg").unlink()
print(json.dumps({"first": first, "polls": costs, "noticed": noticed, "peak_mb": peak_mb()}))
'''


def run(kind: str, library: Path, polls: int, interval: float) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", CHILD, kind, str(library), str(polls), str(interval)],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folders", type=int, default=3000)
    parser.add_argument("--polls", type=int, default=3)
    parser.add_argument("--interval", type=float, default=30.0, help="watch.poll_interval (seconds)")
    args = parser.parse_args()
    free = os.statvfs("/tmp").f_favail
    if free < args.folders * (PER_FOLDER + 2) * 2:
        sys.exit(f"/tmp has {free} free inodes; {args.folders * (PER_FOLDER + 2)} are needed (df -i /tmp)")
    shutil.rmtree(WORK, ignore_errors=True)
    try:
        library = WORK / "library"
        started = time.monotonic()
        files = build(library, args.folders)
        print(f"library: {files:,} files in {args.folders:,} folders ({DISTINCT} distinct photos hard-linked), "
              f"built in {time.monotonic() - started:.0f} s; poll interval {args.interval:g} s")
        print(f"{'poller':<34} {'first listing':>14} {'CPU per poll':>13} {'wall per poll':>14} "
              f"{'peak memory':>12} {'new photo noticed':>18}")
        for kind, name in (("watchdog", "watchdog PollingObserver (before)"), ("folders", "tagger FolderPoller (after)")):
            r = run(kind, library, args.polls, args.interval)
            polls = r["polls"]
            assert isinstance(polls, list)
            cpu = sum(c for c, _ in polls) / len(polls)
            wall = sum(w for _, w in polls) / len(polls)
            noticed = f"{r['noticed']:.1f} s" if isinstance(r["noticed"], float) else "never"
            print(f"{name:<34} {r['first']:>12.1f} s {cpu:>11.3f} s {wall:>12.3f} s "
                  f"{r['peak_mb']:>9.0f} MB {noticed:>18}")
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    main()
