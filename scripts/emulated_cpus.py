"""Check tagger's numerics on CPUs this machine does not have, under qemu's user-mode emulation.

Users run tagger on AVX2 desktops without VNNI, on ARM64 NAS boxes and on AVX-512 servers. This
decodes and preprocesses the same camera-size photos, and runs the fp32 model and both INT8
schemes, natively and on each emulated CPU. It then compares what each CPU computed with this
machine: preprocessing bit for bit, fp32's top-1, and each INT8 scheme's distance from ONNX
Runtime's float evaluation of the same model. That distance is small where the integer kernels
are exact, and large where they saturate. Emulation checks numbers only: its speed means nothing.

    sudo .venv/bin/python scripts/emulated_cpus.py --setup-arm64 /var/tmp/tagger-arm64   # once
    .venv/bin/python scripts/emulated_cpus.py --count 60 --arm64 /var/tmp/tagger-arm64

Needs qemu-user (Debian's qemu-user), and for ARM64 a Debian arm64 Python with aarch64 wheels of
the versions installed here, which --setup-arm64 fetches from the registries (apt and pip).
ONNX Runtime reads /proc/cpuinfo, which qemu does not emulate, so each ARM64 run gets an ARM
one bind-mounted over it in its own mount namespace (unshare -m: root).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL = "efficientnet-lite0"
FULL_DECODES = 6  # full decodes are slow under emulation; the draft path covers every photo
# A Neoverse-N1 (Graviton 2, Ampere Altra): ARMv8.2 with the dot-product instructions.
ARM_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp "
    "asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
    "CPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n"
    for i in range(2)
)
ARM64_DEBS = [
    "python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6", "libexpat1", "zlib1g",
    "libffi8", "libssl3", "libbz2-1.0", "liblzma5", "libsqlite3-0", "libstdc++6", "libgcc-s1", "libuuid1",
    "libncursesw6", "libtinfo6", "libreadline8", "libcrypt1", "libdb5.3", "libgdbm6", "libnsl2", "libtirpc3",
    "libgssapi-krb5-2", "libkrb5-3", "libk5crypto3", "libkrb5support0", "libcom-err2", "libkeyutils1",
    "libpython3.11-dev",  # headers, to cross-build tagger.engine._resample for ARM64
]


def child(out: Path, photos: list[Path], models: list[Path], unfused: bool) -> None:
    """On whichever CPU runs this: the model inputs of `photos`, and each model's logits for them."""
    sys.path.insert(0, str(ROOT))
    import onnxruntime as ort

    from tagger.engine.decode import decode_array, draft_size
    from tagger.engine.weights import MODELS

    spec = MODELS[MODEL].preprocess
    draft = np.stack([decode_array(p.read_bytes(), 10**9, spec, draft_size(spec, True)).array for p in photos])
    full = np.stack([decode_array(p.read_bytes(), 10**9, spec, None).array for p in photos[:FULL_DECODES]])
    from tagger.engine.fastjpeg import describe

    results = {"draft": draft, "full": full, "jpeg_path": np.array(describe())}
    for model in models:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        if unfused:  # the QDQ model evaluated in float: what the quantized model means, no integer kernels
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        results[model.stem] = np.concatenate(
            [session.run(["logits"], {"input": draft[i : i + 16]})[0] for i in range(0, len(draft), 16)]
        )
    np.savez(out, **results)  # type: ignore[arg-type]  # numpy types savez as if a name could be allow_pickle


def setup_arm64(root: Path) -> None:
    """A Debian arm64 Python 3.11 in `root`, and aarch64 wheels of this venv's versions in `root`/site."""
    import onnxruntime
    import PIL

    debs = root / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    subprocess.run(["dpkg", "--add-architecture", "arm64"], check=True)
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(["apt-get", "download", *(f"{name}:arm64" for name in ARM64_DEBS)], cwd=debs, check=True)
    for deb in debs.glob("*.deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root / "sysroot")], check=True)
    wheels = root / "wheels"
    import simplejpeg

    pins = [f"onnxruntime=={onnxruntime.__version__}", f"numpy=={np.__version__}", f"pillow=={PIL.__version__}",
            f"simplejpeg=={simplejpeg.__version__}"]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--implementation", "cp",
         "--python-version", "3.11", "--platform", "manylinux_2_28_aarch64", "--platform", "manylinux2014_aarch64",
         "-d", str(wheels), *pins],
        check=True,
    )
    import zipfile

    for wheel in wheels.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(root / "site")
    build_resample_arm64(root)
    print(f"arm64 Python and wheels in {root}")


def build_resample_arm64(root: Path) -> None:
    """tagger.engine._resample for ARM64 (NEON), beside the x86 one in tagger/, with Debian's cross compiler
    (gcc-aarch64-linux-gnu); without it, the ARM64 runs decode with Pillow alone and say so."""
    include = root / "sysroot" / "usr" / "include"
    out = ROOT / "tagger" / "_resample.cpython-311-aarch64-linux-gnu.so"
    command = ["aarch64-linux-gnu-gcc", "-O3", "-shared", "-fPIC", f"-I{include / 'python3.11'}", f"-I{include}",
               str(ROOT / "tagger" / "_resample.c"), "-o", str(out)]
    try:
        subprocess.run(command, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"tagger.engine._resample not built for ARM64 ({exc}): its runs use Pillow alone")


def emulated_runs(arm64: Path | None, work: Path) -> dict[str, list[str]]:
    """name -> command prefix that runs a Python script on that emulated CPU."""
    runs = {"x86-64 AVX2, no VNNI (qemu Haswell)": ["qemu-x86_64", "-cpu", "Haswell", sys.executable]}
    if arm64 is not None:
        cpuinfo = work / "cpuinfo"
        cpuinfo.write_text(ARM_CPUINFO)
        python = arm64 / "sysroot" / "usr" / "bin" / "python3.11"
        wrapper = (
            f'mount --bind {cpuinfo} /proc/cpuinfo && exec qemu-aarch64 -cpu neoverse-n1 -L {arm64 / "sysroot"} '
            f'-E PYTHONPATH={arm64 / "site"} {python} "$@"'
        )
        runs["ARM64 with dot product (qemu Neoverse-N1)"] = ["unshare", "-m", "sh", "-c", wrapper, "arm64"]
    return runs


def export_models(work: Path) -> list[Path]:
    """This machine's fp32 export and both INT8 schemes, as portable QDQ files (not CPU-optimised)."""
    sys.path.insert(0, str(ROOT))
    import shutil

    from tagger.engine.classify import Classifier

    from tagger.engine.export import onnx_cache_path
    from tagger.engine.quantize import quantize_int8

    weights_dir = work / "weights"
    classifier = Classifier.load(MODEL, weights_dir, runtime="onnx")
    fp32 = onnx_cache_path(classifier.spec, classifier.weights, weights_dir, "fp32")
    models = [work / "fp32.onnx"]
    shutil.copy(fp32, models[0])
    for scheme in ("u8s8", "u8s8r7"):
        scratch = work / f"quantize-{scheme}"
        scratch.mkdir()
        models.append(work / f"int8-{scheme}.onnx")
        shutil.copy(quantize_int8(classifier.spec, fp32, scratch, scheme), models[-1])
    return models


def report(name: str, got: dict[str, np.ndarray], native: dict[str, np.ndarray], unfused: dict[str, np.ndarray]) -> None:
    """One CPU's line per check, against this machine and the float evaluation."""
    fp32_top = native["fp32"].argmax(1)
    same_draft = np.array_equal(got["draft"], native["draft"])
    same_full = np.array_equal(got["full"], native["full"])
    print(f"{name}:")
    print(f"  JPEG path: {got['jpeg_path']}")
    print(f"  preprocessing bit-identical to this machine: draft {same_draft}, full decode {same_full}"
          f" (max |difference| {float(np.abs(got['draft'] - native['draft']).max()):.2g})")
    print(f"  fp32 top-1 = this machine's on {(got['fp32'].argmax(1) == fp32_top).mean():.1%} of {len(fp32_top)}"
          f" (mean |logit difference| {float(np.abs(got['fp32'] - native['fp32']).mean()):.2g})")
    for scheme in ("int8-u8s8", "int8-u8s8r7"):
        distance = float(np.abs(got[scheme] - unfused[scheme]).mean())
        agree = (got[scheme].argmax(1) == fp32_top).mean()
        print(f"  {scheme}: mean |logits - float evaluation| {distance:.3f}; top-1 = fp32 on {agree:.1%}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=60, help="distinct 4000x3000 photos")
    parser.add_argument("--arm64", type=Path, help="the folder --setup-arm64 filled")
    parser.add_argument("--setup-arm64", type=Path, metavar="DIR")
    parser.add_argument("--child", nargs=4, metavar=("OUT", "PHOTOS", "MODELS", "UNFUSED"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        out, photos, models, unfused = args.child
        child(Path(out), [Path(p) for p in Path(photos).read_text().split("\n") if p],
              [Path(m) for m in models.split(",")], unfused == "1")
        return 0
    if args.setup_arm64:
        setup_arm64(args.setup_arm64)
        return 0
    sys.path.insert(0, str(ROOT / "scripts"))
    from sample_photos import distinct_views

    with tempfile.TemporaryDirectory(prefix="tagger-cpus-") as tmp:
        work = Path(tmp)
        photos = distinct_views(work / "photos", args.count, (4000, 3000))
        listing = work / "photos.txt"
        listing.write_text("\n".join(str(p) for p in photos))
        models = export_models(work)
        names = ",".join(str(m) for m in models)
        me = [str(Path(__file__).resolve()), "--child"]
        subprocess.run([sys.executable, *me, str(work / "native.npz"), str(listing), names, "0"], check=True)
        subprocess.run([sys.executable, *me, str(work / "unfused.npz"), str(listing), names, "1"], check=True)
        native, unfused = dict(np.load(work / "native.npz")), dict(np.load(work / "unfused.npz"))
        sys.path.insert(0, str(ROOT))
        from tagger.cpu import cpu_info

        report(f"this machine, {cpu_info().describe()}", native, native, unfused)
        for name, prefix in emulated_runs(args.arm64, work).items():
            out = work / "emulated.npz"
            result = subprocess.run([*prefix, *me, str(out), str(listing), names, "0"], capture_output=True, text=True)
            if result.returncode != 0:  # qemu warns of every host CPU feature it lacks: only the rest is news
                errors = [line for line in result.stderr.splitlines() if "TCG doesn't support" not in line]
                print(f"{name}: failed (exit {result.returncode}): " + "\n".join(errors[-5:]))
                continue
            report(name, dict(np.load(out)), native, unfused)
    print("Each CPU's own scheme (tagger.cpu.int8_scheme): u8s8 with VNNI and on ARM64, u8s8r7 on x86 without VNNI.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
