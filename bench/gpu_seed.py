"""GPU benchmark of the seed train.py under the ``h100-60s`` profile, prepared here, run on a lent GPU.

The GPU machine has PyTorch, Triton, numpy, pyarrow and tiktoken but no
pydantic, no requests, no rustbpe and no internet. So the benchmark runs in
two halves:

    .venv/bin/python bench/gpu_seed.py --prepare [--cache bench/gpu-cache]   # here, on CPU
    python3 bench/gpu_seed.py --run --cache bench/gpu-cache --out "$OUT"     # on the GPU machine

``--prepare`` builds a self-contained cache (about 30 MB; git-ignored, so it
travels to the GPU machine through the device tool's ``carry``):

- ``climbmix/data/``: a local stand-in corpus, NOT climbmix: the ``.py``,
  ``.txt`` and ``.rst`` files of this Python's standard library, one file one
  document (cut at line boundaries into pieces of at most 10k characters),
  about one file in ten held out as the pinned validation shard
  ``shard_06542.parquet``; the rest shuffled into training shards
  ``shard_00000.parquet``... It only has to feed the GPU realistically
  shaped data: val_bpb from it is not comparable with upstream's.
- ``climbmix/tokenizer-bpe-8192/``: a BPE 8192 tokenizer trained on it with
  ``trainer.data.train_bpe_tokenizer`` (the farm's own code).
- ``pylib/``: copies of pydantic, pydantic_core, annotated_types,
  typing_inspection, typing_extensions, requests, urllib3, idna,
  charset_normalizer and certifi from this venv (built for the Python named
  in ``pylib/PYLIB.json``), and ``wheels/``: pydantic_core wheels of the same
  version for other CPython versions, unpacked at run time if the GPU
  machine's Python is not this one.

``--run`` puts the repo and ``pylib`` on the path, checks the imports and
CUDA, writes the seed train.py for ``h100-60s`` and runs it twice through
the trusted runner (``trainer.runner.run``): once with empty
TORCHINDUCTOR_CACHE_DIR / TRITON_CACHE_DIR (cold compile) and once reusing
them (warm). It writes ``gpu_seed.json``, ``gpu_seed.md``, each run's log and
result.json, and ``nvidia-smi.txt`` to ``--out``, the JSON and table again
after every step so a timeout still leaves what was measured.
``--run --dry-run`` stops after the checks and writing the seed (for a CPU
machine). Only the standard library is imported at module level, so
``--run`` can say clearly what is missing on a machine that lacks it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO / "bench" / "gpu-cache"
PROFILE_NAME = "h100-60s"
DOC_CAP_CHARS = 10_000
VAL_EVERY = 10  # about one stdlib file in VAL_EVERY goes to the validation shard
TRAIN_SHARDS = 6
ROW_GROUP_DOCS = 1024
SIZE_LIMIT_MB = 40
PYLIB_PACKAGES = [
    "pydantic",
    "pydantic_core",
    "annotated_types",
    "typing_inspection",
    "typing_extensions",
    "requests",
    "urllib3",
    "idna",
    "charset_normalizer",
    "certifi",
]
EXTRA_PYTHONS = ["3.12", "3.13", "3.14"]  # pydantic_core wheels for these too; the trainer needs 3.11+

# Upstream autoresearch's seed on one H100 (its README): 953 steps in 300.1 s of
# training, 325.9 s in all, MFU 39.8 %, 524288 tokens per step.
UPSTREAM = {
    "num_steps": 953,
    "training_seconds": 300.1,
    "total_seconds": 325.9,
    "mfu_percent": 39.8,
    "tokens_per_step": 524288,
}
GOAL_MFU = 35.0


def say(msg: str) -> None:
    print(msg, flush=True)


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# ---------------------------------------------------------------------------
# --prepare (here, in the project's venv)
# ---------------------------------------------------------------------------


def _pieces(text: str, cap: int) -> list[str]:
    """``text`` cut at line boundaries into pieces of at most ``cap`` characters (a longer line is cut hard)."""
    out: list[str] = []
    cur: list[str] = []
    size = 0
    for line in text.splitlines(keepends=True):
        while len(line) > cap:
            if cur:
                out.append("".join(cur))
                cur, size = [], 0
            out.append(line[:cap])
            line = line[cap:]
        if size + len(line) > cap and cur:
            out.append("".join(cur))
            cur, size = [], 0
        cur.append(line)
        size += len(line)
    if cur:
        out.append("".join(cur))
    return [p for p in out if p.strip()]


def _stdlib_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "dist-packages", "__pycache__"}
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(filenames):
            if name.endswith((".py", ".txt", ".rst")):
                files.append(Path(dirpath) / name)
    return root, files


def _write_shard(path: Path, docs: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"text": pa.array(docs, type=pa.string())})
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_DOCS)
    os.replace(tmp, path)


def build_corpus(cache: Path, force: bool) -> dict:
    """Stdlib text as train shards and the pinned val shard, where the h100 profiles look for climbmix."""
    from trainer.profiles import get_profile, shard_filename

    profile = get_profile(PROFILE_NAME)
    data_dir = profile.data_dir(cache)
    manifest_path = data_dir / "manifest.json"
    if manifest_path.exists() and not force:
        say(f"corpus: present in {data_dir}")
        return json.loads(manifest_path.read_text())
    if data_dir.exists():
        shutil.rmtree(data_dir)
    data_dir.mkdir(parents=True)
    root, files = _stdlib_files()
    train, val, skipped, n_val_files = [], [], 0, 0
    for path in files:
        rel = path.relative_to(root).as_posix()
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            skipped += 1
            continue
        docs = _pieces(text, DOC_CAP_CHARS)
        if not docs:
            continue
        if int(hashlib.sha256(rel.encode()).hexdigest(), 16) % VAL_EVERY == 0:
            val.extend(docs)
            n_val_files += 1
        else:
            train.extend(docs)
    random.Random(0).shuffle(train)
    per_shard = -(-len(train) // TRAIN_SHARDS)
    names = []
    for i in range(TRAIN_SHARDS):
        chunk = train[i * per_shard : (i + 1) * per_shard]
        if chunk:
            _write_shard(data_dir / shard_filename(i), chunk)
            names.append(shard_filename(i))
    _write_shard(data_dir / profile.val_filename, val)
    info = {
        "source": f"CPython {platform.python_version()} standard library (.py/.txt/.rst) at {root}",
        "note": "a stand-in for climbmix so the GPU machine needs no download; val_bpb is not comparable",
        "doc_cap_chars": DOC_CAP_CHARS,
        "files": {"train": len(files) - skipped - n_val_files, "val": n_val_files, "skipped_not_utf8": skipped},
        "docs": {"train": len(train), "val": len(val)},
        "chars": {"train": sum(map(len, train)), "val": sum(map(len, val))},
        "train_shards": names,
        "val_shard": profile.val_filename,
        "sha256": {n: hashlib.sha256((data_dir / n).read_bytes()).hexdigest() for n in [*names, profile.val_filename]},
    }
    manifest_path.write_text(json.dumps(info, indent=2) + "\n")
    say(
        f"corpus: {info['docs']['train']} train docs ({info['chars']['train'] / 1e6:.1f}M chars, {len(names)} shards), "
        f"{info['docs']['val']} val docs ({info['chars']['val'] / 1e6:.1f}M chars) in {data_dir}"
    )
    return info


def _dist_info(site: Path, package: str) -> list[Path]:
    norm = package.replace("-", "_").lower()
    return [p for p in site.glob("*.dist-info") if p.name.split("-")[0].replace("-", "_").lower() == norm]


def build_pylib(cache: Path, force: bool, extra_pythons: list[str]) -> dict:
    """Copy the packages the trainer needs and the GPU machine lacks; fetch pydantic_core for other Pythons."""
    import importlib.metadata
    import importlib.util

    pylib, wheels = cache / "pylib", cache / "wheels"
    stamp = pylib / "PYLIB.json"
    if stamp.exists() and not force:
        say(f"pylib: present in {pylib}")
        return json.loads(stamp.read_text())
    for d in (pylib, wheels):
        if d.exists():
            shutil.rmtree(d)
    pylib.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    versions = {}
    for name in PYLIB_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise SystemExit(f"pylib: {name} is not installed in this venv; run `make install` first")
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            shutil.copytree(origin.parent, pylib / name, ignore=ignore)
            site = origin.parent.parent
        else:
            shutil.copy2(origin, pylib / origin.name)
            site = origin.parent
        for d in _dist_info(site, name):
            shutil.copytree(d, pylib / d.name, ignore=ignore)
        versions[name] = importlib.metadata.version(name.replace("_", "-"))
    tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
    info = {
        "python": platform.python_version(),
        "abi": tag,
        "cache_tag": sys.implementation.cache_tag,
        "platform": sysconfig.get_platform(),
        "extension_suffix": sysconfig.get_config_var("EXT_SUFFIX"),
        "versions": versions,
        "pydantic_core_wheels": {},
        "note": "pydantic_core (and charset_normalizer's speedups) are compiled for the Python above; "
        "wheels/ holds pydantic_core for other CPython versions, unpacked by --run when needed",
    }
    wheels.mkdir()
    for py in extra_pythons:
        abi = "cp" + py.replace(".", "")
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
            "--python-version", py, "--implementation", "cp", "--abi", abi,
            "--platform", "manylinux_2_17_x86_64", "-d", str(wheels), f"pydantic-core=={versions['pydantic_core']}",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        got = sorted(wheels.glob(f"pydantic_core-*-{abi}-*.whl"))
        if proc.returncode == 0 and got:
            info["pydantic_core_wheels"][abi] = got[0].name
            say(f"pylib: pydantic_core {versions['pydantic_core']} for CPython {py}: {got[0].name}")
        else:
            say(f"pylib: no pydantic_core wheel for CPython {py} (skipped): {proc.stderr.strip()[-300:]}")
    stamp.write_text(json.dumps(info, indent=2) + "\n")
    say(f"pylib: {len(PYLIB_PACKAGES)} packages for CPython {info['python']} ({tag}) in {pylib}")
    return info


def check_cache(cache: Path) -> dict:
    """In a fresh process under h100-60s: data_ready, load the tokenizer, draw a train and a val batch."""
    code = r"""
import json, time
from pathlib import Path
import trainer.prepare as p
from trainer.data import data_ready
t0 = time.monotonic()
tok = p.Tokenizer.from_directory()
out = {"profile": p.PROFILE.name, "missing": data_ready(p.PROFILE, Path(p.CACHE_DIR)), "vocab": tok.get_vocab_size()}
import torch
from trainer.textdata import documents, packed_rows, split_files
def batch(split):  # what the runner's feeder (train) and the evaluator (val) pack: the trusted side's reading
    rows = packed_rows(tok, p.MAX_SEQ_LEN, documents(split_files(p.PROFILE, Path(p.CACHE_DIR), split), []))
    data = torch.tensor([next(rows)[0] for _ in range(2)])
    return data[:, :-1], data[:, 1:]
x, y = batch("train")
assert tuple(x.shape) == (2, p.MAX_SEQ_LEN) and bool((x[:, 1:] == y[:, :-1]).all()), "bad batch"
assert int(x.max()) < p.VOCAB_SIZE and int(x[0, 0]) == tok.get_bos_token_id()
xv, yv = batch("val")
sample = split_files(p.PROFILE, Path(p.CACHE_DIR), "val")[0]
import pyarrow.parquet as pq
texts = pq.read_table(sample, columns=["text"]).column("text").to_pylist()[:200]
n_bytes = sum(len(t.encode()) for t in texts)
n_tok = sum(len(r) for r in tok.encode(texts))
tb = p.get_token_bytes()
out.update(batch_shape=list(x.shape), val_batch_shape=list(xv.shape), bytes_per_token=round(n_bytes / n_tok, 3),
           token_bytes_len=int(tb.numel()), seconds=round(time.monotonic() - t0, 2))
print("CHECK " + json.dumps(out))
"""
    env = dict(os.environ, FARM_PROFILE=PROFILE_NAME, FARM_CACHE=str(cache))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("CHECK ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"check: the prepared cache does not load:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(line[6:])
    if result["missing"]:
        raise SystemExit(f"check: data_ready reports missing files: {result['missing']}")
    say(f"check: {json.dumps(result)}")
    return result


def prepare(cache: Path, force: bool, extra_pythons: list[str], skip_tokenizer: bool) -> int:
    from trainer.data import train_bpe_tokenizer
    from trainer.profiles import get_profile

    profile = get_profile(PROFILE_NAME)
    cache.mkdir(parents=True, exist_ok=True)
    manifest = cache / "manifest.json"
    previous = json.loads(manifest.read_text()) if manifest.exists() and not force else {}
    timings = dict(previous.get("seconds", {}))  # steps found done keep the time they took when built
    tok_dir = profile.tokenizer_dir(cache)
    steps = [
        ("corpus", lambda: build_corpus(cache, force), (profile.data_dir(cache) / "manifest.json").exists()),
        ("pylib", lambda: build_pylib(cache, force, extra_pythons), (cache / "pylib" / "PYLIB.json").exists()),
    ]
    results = {}
    for name, step, done in steps:
        t = time.monotonic()
        results[name] = step()
        if force or not done or name not in timings:
            timings[name] = time.monotonic() - t
    if skip_tokenizer:
        say("tokenizer: skipped (--skip-tokenizer); run --prepare again without it")
        return 0
    if force and tok_dir.exists():
        shutil.rmtree(tok_dir)
    done = (tok_dir / "tokenizer.pkl").exists()
    t = time.monotonic()
    train_bpe_tokenizer(profile.data_dir(cache), tok_dir, profile.vocab_size, profile.val_filename, progress=say)
    if not done or "tokenizer" not in timings:
        timings["tokenizer"] = time.monotonic() - t
    t = time.monotonic()
    check = check_cache(cache)
    timings["check"] = time.monotonic() - t
    corpus, pylib = results["corpus"], results["pylib"]
    size = _du(cache)
    info = {
        "prepared_at": _utc_now(),
        "profile": PROFILE_NAME,
        "cache_bytes": size,
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "corpus": corpus,
        "pylib": pylib,
        "check": check,
    }
    manifest.write_text(json.dumps(info, indent=2) + "\n")
    say(f"prepared {cache}: {size / 1e6:.1f} MB; seconds: {info['seconds']}")
    if size > SIZE_LIMIT_MB * 1e6:
        say(f"WARNING: {size / 1e6:.1f} MB is over the {SIZE_LIMIT_MB} MB meant for carry")
    return 0


# ---------------------------------------------------------------------------
# --run (on the GPU machine: only the standard library until the path is set)
# ---------------------------------------------------------------------------


class Report:
    """gpu_seed.json and gpu_seed.md in --out, rewritten after every step."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data: dict = {"started_at": _utc_now(), "profile": PROFILE_NAME, "stage": "setup", "runs": {}}

    def save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "gpu_seed.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(tmp, self.out / "gpu_seed.json")
        (self.out / "gpu_seed.md").write_text(render_markdown(self.data))

    def fail(self, stage: str, message: str, code: int) -> int:
        self.data.update(stage=stage, error=message, finished_at=_utc_now())
        self.save()
        say(f"\nFAILED ({stage}): {message}")
        return code


def _abi_tag() -> str:
    return f"cp{sys.version_info.major}{sys.version_info.minor}" + ("t" if "t" in getattr(sys, "abiflags", "") else "")


def _pydantic_core_overlay(cache: Path, work: Path) -> tuple[Path | None, str]:
    """A folder with a pydantic_core for this Python, to put before pylib; None if pylib's own fits."""
    import importlib.machinery

    core = cache / "pylib" / "pydantic_core"
    if any((core / f"_pydantic_core{s}").exists() for s in importlib.machinery.EXTENSION_SUFFIXES):
        return None, f"pylib's own build fits {_abi_tag()}"
    tag = _abi_tag()
    wheels = sorted((cache / "wheels").glob(f"pydantic_core-*-{tag}-{tag}-*.whl"))
    if not wheels:
        return None, f"no pydantic_core build for {tag} in {cache / 'pylib'} or {cache / 'wheels'}"
    overlay = work / "pylib-overlay"
    if overlay.exists():
        shutil.rmtree(overlay)
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(overlay, [n for n in zf.namelist() if n.startswith("pydantic_core/")])
    return overlay, f"unpacked {wheels[0].name}"


def _try_import(name: str) -> dict:
    import importlib

    try:
        mod = importlib.import_module(name)
    except Exception as exc:  # ImportError, or an incompatible build raising something else
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "version": str(getattr(mod, "__version__", getattr(mod, "VERSION", "")))}


def setup_environment(cache: Path, work: Path, report: Report) -> int | None:
    """Path, env and import checks; an exit code on failure, None when the trainer is ready."""
    d = report.data
    d["python"] = {"version": platform.python_version(), "executable": sys.executable, "abi": _abi_tag()}
    d["host"] = {"machine": platform.machine(), "platform": platform.platform(), "cpus": os.cpu_count()}
    say(f"python {platform.python_version()} ({_abi_tag()}) at {sys.executable}; {platform.platform()}")
    stamp = cache / "pylib" / "PYLIB.json"
    if not stamp.exists() or not (cache / "manifest.json").exists():
        return report.fail(
            "setup",
            f"no prepared cache at {cache}: run `.venv/bin/python bench/gpu_seed.py --prepare` on the CPU machine "
            "and pass the folder with the device tool's carry option",
            2,
        )
    pylib_info = json.loads(stamp.read_text())
    d["cache"] = {"path": str(cache), "pylib_built_for": pylib_info.get("python"), "bytes": _du(cache)}
    import enum

    if not hasattr(enum, "StrEnum"):  # new in 3.11; trainer.result needs it
        return report.fail(
            "setup",
            f"Python {platform.python_version()} is too old: the trainer needs 3.11+ (enum.StrEnum); "
            "run bench/gpu_seed.sh with PYTHON=python3.11 (or newer) if the machine has one",
            2,
        )
    overlay, how = _pydantic_core_overlay(cache, work)
    d["cache"]["pydantic_core"] = how
    say(f"pydantic_core: {how}")
    paths = [str(REPO), *([str(overlay)] if overlay else []), str(cache / "pylib")]
    sys.path[:0] = paths
    os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
    os.environ["FARM_CACHE"] = str(cache)
    os.environ["FARM_PROFILE"] = PROFILE_NAME
    imports = {}
    for name in ["pydantic_core", "pydantic", "requests", "numpy", "pyarrow", "tiktoken", "torch", "triton"]:
        imports[name] = _try_import(name)
        state = imports[name].get("version") if imports[name]["ok"] else "MISSING: " + imports[name]["error"]
        say(f"  import {name:<14} {state}")
    d["imports"] = imports
    if not imports["pydantic_core"]["ok"]:
        built = pylib_info.get("python")
        wheels = ", ".join(sorted(pylib_info.get("pydantic_core_wheels", {}))) or "none"
        return report.fail(
            "setup",
            f"pydantic_core does not load on Python {platform.python_version()} ({_abi_tag()}, {platform.machine()}): "
            f"pylib was built for CPython {built} ({pylib_info.get('platform')}), extra wheels: {wheels}. "
            "Re-run --prepare with --extra-pythons covering this version, or run bench/gpu_seed.sh with "
            f"PYTHON=python{built.rsplit('.', 1)[0] if built else '3.11'}. "
            f"Error: {imports['pydantic_core']['error']}",
            2,
        )
    missing = [n for n, r in imports.items() if not r["ok"] and n not in ("numpy", "triton")]  # checked later
    if missing:
        return report.fail("setup", f"cannot import {', '.join(missing)}: see 'imports' in gpu_seed.json", 2)
    trainer_import = _try_import("trainer.runner")
    if not trainer_import["ok"]:
        return report.fail("setup", f"the trainer does not import: {trainer_import['error']}", 2)
    return None


def gpu_facts(report: Report, out: Path) -> bool:
    import torch

    d = report.data
    cuda = torch.cuda.is_available()
    d["torch"] = {"version": torch.__version__, "cuda": torch.version.cuda, "cuda_available": cuda}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        d["gpu"] = {
            "name": torch.cuda.get_device_name(),
            "capability": list(torch.cuda.get_device_capability()),
            "memory_gib": round(props.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
        }
        g = d["gpu"]
        say(f"gpu: {g['name']} (sm {g['capability']}, {g['memory_gib']} GiB) x {g['count']}")
    say(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuda available: {cuda}")
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            proc = subprocess.run([smi], capture_output=True, text=True, timeout=30)
            text = proc.stdout + proc.stderr
        except (OSError, subprocess.TimeoutExpired) as exc:
            text = f"nvidia-smi failed: {exc}"
        (out / "nvidia-smi.txt").write_text(text)
        d["nvidia_smi"] = text
    else:
        d["nvidia_smi"] = None
    return cuda


def _tail(log: Path, label: str, stop: threading.Event) -> None:
    """Echo the run's log as it grows: every line but the per-step ones, and those every 10 s."""
    pos, last_step = 0, 0.0
    while True:
        done = stop.is_set()
        if log.exists():
            with log.open("rb") as f:
                f.seek(pos)
                chunk = f.read()
            cut = chunk.rfind(b"\n") + 1 if not done else len(chunk)
            pos += cut
            for line in chunk[:cut].decode("utf-8", "replace").splitlines():
                if line.startswith("step "):
                    if time.monotonic() - last_step < 10:
                        continue
                    last_step = time.monotonic()
                say(f"  [{label}] {line}"[:300])
        if done:
            return
        stop.wait(1.0)


def _log_facts(log_text: str) -> dict:
    facts = {}
    if m := re.search(r"^device: (\S+) \| attention: (\S+)", log_text, re.M):
        facts["attention"] = m.group(2)
    if m := re.search(r"^Flash Attention 3 unavailable \((.*)\); using SDPA", log_text, re.M):
        facts["flash_attention_3"] = m.group(1)[:300]
    if m := re.search(r"^model: (.*)$", log_text, re.M):
        facts["model"] = m.group(1)
    if m := re.search(r"^batch: (.*)$", log_text, re.M):
        facts["batch"] = m.group(1)
    return facts


def run_one(
    label: str, train_py: Path, work: Path, out: Path, wall_limit: float, caches: dict, overrides: dict
) -> dict:
    from trainer.profiles import get_profile
    from trainer.runner import run

    # Overrides change only the runner's rules (the candidate's prepare reads FARM_PROFILE itself).
    profile = get_profile(PROFILE_NAME).model_copy(update=overrides)
    os.environ.update(caches)
    run_dir = work / f"run-{label}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    say(f"\n== {label}: seed train.py under {PROFILE_NAME}, wall limit {wall_limit:.0f} s, caches {caches}")
    stop = threading.Event()
    tail = threading.Thread(target=_tail, args=(run_dir / "run.log", label, stop), daemon=True)
    tail.start()
    t0 = time.monotonic()
    try:
        result = run(train_py, run_dir, profile, wall_limit=wall_limit)
    finally:
        stop.set()
        tail.join(timeout=5)
    wall = time.monotonic() - t0
    for name, dest in [("run.log", f"run-{label}.log"), ("result.json", f"result-{label}.json")]:
        if (run_dir / name).exists():
            shutil.copy2(run_dir / name, out / dest)
    f, s = result.facts, result.summary
    log_text = (run_dir / "run.log").read_text("utf-8", "replace") if (run_dir / "run.log").exists() else ""
    per_batch = f.train_tokens / f.train_batches if f.train_batches else 0
    charged_batches = max(0, f.train_batches - profile.warmup_batches)
    steady_tps = charged_batches * per_batch / f.training_seconds if f.training_seconds > 0 else None
    info = {
        "status": result.status.value,
        "reason": result.reason,
        "val_bpb": result.val_bpb,
        "harness_val_bpb": f.val_bpb,
        "exit_code": result.exit_code,
        "device": result.device,
        "startup_seconds": f.startup_seconds,
        "training_seconds": f.training_seconds,
        "training_wall_seconds": f.training_wall_seconds,
        # the runner's wall clock starts after the warm-up batches: what is left of the total is compile and exit
        "warmup_seconds": f.total_seconds - (f.startup_seconds or 0) - f.training_wall_seconds - f.eval_seconds,
        "eval_seconds": f.eval_seconds,
        "total_seconds": f.total_seconds,
        "runner_wall_seconds": wall,
        "train_batches": f.train_batches,
        "train_tokens": f.train_tokens,
        "eval_tokens": f.eval_tokens,
        "tokens_per_second": f.train_tokens / f.training_wall_seconds if f.training_wall_seconds > 0 else None,
        "tokens_per_second_charged": steady_tps,
        "mfu_percent": s.mfu_percent,
        "num_steps": s.num_steps,
        "peak_vram_mb": s.peak_vram_mb,
        "num_params_M": s.num_params_M,
        "summary": s.model_dump(),
        "facts": f.model_dump(),
        **_log_facts(log_text),
    }
    say(
        f"== {label}: {info['status']} {info['reason']} | val_bpb {info['val_bpb']} | steps {info['num_steps']} | "
        f"MFU {info['mfu_percent']} % | startup {_fmt(info['startup_seconds'])} s | warm-up (compile) "
        f"{_fmt(info['warmup_seconds'])} s | training {_fmt(info['training_seconds'])} s | eval "
        f"{_fmt(info['eval_seconds'])} s | total {_fmt(info['total_seconds'])} s | "
        f"{_fmt((info['tokens_per_second_charged'] or 0) / 1e6, 3)} M tok/s charged"
    )
    return info


def _children() -> list[int]:
    """Pids whose parent is this process (the runner's candidates lead their own sessions)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == os.getpid():
            pids.append(int(stat.parent.name))
    return pids


def _on_sigterm(report: Report):
    """On the shell guard's SIGTERM: kill the candidate's process group, save what was measured, exit 124."""

    def handler(signum, frame) -> None:
        for pid in _children():
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        for log in Path(report.data.get("work", "/nonexistent")).glob("run-*/run.log"):
            dest = report.out / f"{log.parent.name}.log"
            if not dest.exists():
                shutil.copy2(log, dest)  # the partial log of the run that was cut off
        report.data.update(stage=f"killed by SIGTERM during: {report.data.get('stage')}", finished_at=_utc_now())
        report.save()
        say(f"\ngpu_seed: SIGTERM; partial results saved in {report.out}")
        os._exit(124)

    return handler


def run_benchmark(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    deadline = t_start + args.budget_seconds
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache).resolve()
    work = Path(args.work).resolve() if args.work else Path(tempfile.mkdtemp(prefix="gpu_seed-"))
    work.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    signal.signal(signal.SIGTERM, _on_sigterm(report))
    report.data.update(work=str(work), budget_seconds=args.budget_seconds, dry_run=args.dry_run)
    report.save()
    say(f"gpu_seed: cache {cache}, out {out}, work {work}, budget {args.budget_seconds:.0f} s")
    failed = setup_environment(cache, work, report)
    if failed is not None:
        return failed
    cuda = gpu_facts(report, out)
    from trainer.data import data_ready
    from trainer.profiles import get_profile
    from trainer.seed import seed_source

    profile = get_profile(PROFILE_NAME)
    missing = data_ready(profile, cache)
    if missing:
        return report.fail("setup", f"the cache lacks {missing}: run --prepare again", 2)
    train_py = work / "seed" / "train.py"
    train_py.parent.mkdir(parents=True, exist_ok=True)
    source = Path(args.train_py).read_text() if args.train_py else seed_source(profile)
    train_py.write_text(source)
    (out / "train.py").write_text(source)
    m = re.search(r"^TOTAL_BATCH_SIZE\s*=\s*(\d+)", source, re.M)
    report.data["seed"] = {
        "path": str(train_py),
        "from": args.train_py or "trainer.seed.seed_source",
        "sha256": hashlib.sha256(source.encode()).hexdigest(),
        "tokens_per_step": int(m.group(1)) if m else None,
    }
    report.data["stage"] = "ready"
    report.save()
    say(f"seed: {train_py} (sha256 {report.data['seed']['sha256'][:12]})")
    if args.dry_run:
        report.data.update(stage="dry-run", finished_at=_utc_now())
        report.save()
        say(f"dry run: checks passed{'' if cuda else ' (no CUDA here)'}; stopping before training. Wrote {out}")
        return 0
    if not cuda and not args.allow_cpu:
        return report.fail(
            "setup", "no CUDA device: torch.cuda.is_available() is False (see nvidia-smi.txt); nothing to measure", 3
        )
    if cuda and not report.data["imports"]["triton"]["ok"]:
        return report.fail("setup", "triton does not import, and torch.compile needs it on the GPU", 2)
    overrides = {"max_wall_factor": args.max_wall_factor} if args.max_wall_factor else {}
    report.data["profile_overrides"] = overrides
    caches = {"TORCHINDUCTOR_CACHE_DIR": str(work / "inductor-cache"), "TRITON_CACHE_DIR": str(work / "triton-cache")}
    for path in caches.values():
        shutil.rmtree(path, ignore_errors=True)
        Path(path).mkdir(parents=True)
    for label in args.runs:
        remaining = deadline - time.monotonic()
        if remaining < args.min_run_seconds:
            report.data["runs"][label] = {"status": "skipped", "reason": f"only {remaining:.0f} s of budget left"}
            say(f"\n== {label}: skipped, only {remaining:.0f} s of the budget left")
            report.save()
            continue
        report.data["stage"] = f"running {label}"
        report.save()
        wall_limit = min(profile.model_copy(update=overrides).wall_limit, remaining - 10)
        try:
            report.data["runs"][label] = run_one(label, train_py, work, out, wall_limit, caches, overrides)
        except Exception as exc:  # the harness's own failure: record it and go on to the next run
            report.data["runs"][label] = {"status": "bench-error", "reason": f"{type(exc).__name__}: {exc}"}
            say(f"== {label}: the benchmark itself failed: {type(exc).__name__}: {exc}")
        report.save()
    report.data.update(stage="done", finished_at=_utc_now(), seconds=round(time.monotonic() - t_start, 1))
    report.save()
    say("\n" + render_markdown(report.data))
    say(f"wrote {out / 'gpu_seed.json'}, {out / 'gpu_seed.md'} and the run logs")
    return 0 if all(r.get("status") == "ok" for r in report.data["runs"].values()) else 1


# ---------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def render_markdown(d: dict) -> str:
    gpu = d.get("gpu", {}).get("name") or "no GPU"
    torch_info = d.get("torch", {})
    source = (d.get("seed") or {}).get("from", "trainer.seed")
    what = "Seed train.py" if source.startswith("trainer.seed") else f"{source} (not the seed)"
    overrides = d.get("profile_overrides") or {}
    lines = [
        f"# {what} on {gpu}: profile {d.get('profile')}" + (f" with {overrides}" if overrides else ""),
        "",
        f"Measured {d.get('started_at')} by `bench/gpu_seed.py --run` (stage: {d.get('stage')}).",
        f"torch {torch_info.get('version', '-')}, CUDA {torch_info.get('cuda', '-')}, "
        f"Python {d.get('python', {}).get('version', '-')}, {d.get('host', {}).get('cpus', '-')} CPUs.",
        "",
    ]
    if d.get("error"):
        lines += [f"**Failed at {d.get('stage')}:** {d['error']}", ""]
    runs = d.get("runs", {})
    if not runs:
        return "\n".join(lines + ["No training run was made.", ""])
    labels = list(runs)
    up = UPSTREAM
    up_tps = up["num_steps"] * up["tokens_per_step"] / up["training_seconds"]
    tokens_per_step = (d.get("seed") or {}).get("tokens_per_step") or up["tokens_per_step"]

    def steps_per_s(r: dict) -> float | None:
        tps = r.get("tokens_per_second_charged")
        return tps / tokens_per_step if tps else None

    def overhead(r: dict) -> float | None:
        if r.get("total_seconds") is None or r.get("training_seconds") is None:
            return None
        return r["total_seconds"] - r["training_seconds"]

    rows = [
        ("status", lambda r: r.get("status"), "ok"),
        ("reason", lambda r: r.get("reason") or "", ""),
        ("attention", lambda r: _fmt(r.get("attention")), "flash-attn-3"),
        ("val_bpb (stdlib corpus: not comparable)", lambda r: _fmt(r.get("val_bpb"), 4), "(climbmix)"),
        ("steps", lambda r: _fmt(r.get("num_steps")), f"{up['num_steps']} (300 s)"),
        ("steps/s (charged training)", lambda r: _fmt(steps_per_s(r), 2), _fmt(up["num_steps"] / 300.1, 2)),
        ("tokens/s, charged training (M)", lambda r: _fmt((r.get("tokens_per_second_charged") or 0) / 1e6 or None, 3),
         _fmt(up_tps / 1e6, 3)),
        ("tokens/s, train_tokens / training wall (M)", lambda r: _fmt((r.get("tokens_per_second") or 0) / 1e6 or None,
                                                                      3), "-"),
        ("MFU % (train.py, bf16 peak 989.5 TFLOP/s)", lambda r: _fmt(r.get("mfu_percent"), 1), _fmt(up["mfu_percent"])),
        ("startup s (process start to first batch)", lambda r: _fmt(r.get("startup_seconds")), "-"),
        ("warm-up s (first 20 batches: compile; and exit)", lambda r: _fmt(r.get("warmup_seconds")), "-"),
        ("training s (charged)", lambda r: _fmt(r.get("training_seconds")), _fmt(up["training_seconds"])),
        ("eval s", lambda r: _fmt(r.get("eval_seconds")), "-"),
        ("total s (runner: spawn to exit)", lambda r: _fmt(r.get("total_seconds")), _fmt(up["total_seconds"])),
        ("overhead s (total - charged training)", lambda r: _fmt(overhead(r)),
         _fmt(up["total_seconds"] - up["training_seconds"])),
        ("train tokens (harness)", lambda r: _fmt(r.get("train_tokens")), "-"),
        ("peak VRAM MB", lambda r: _fmt(r.get("peak_vram_mb"), 0), "-"),
        ("params M", lambda r: _fmt(r.get("num_params_M")), "-"),
    ]  # fmt: skip
    lines += [
        "| | " + " | ".join(labels) + " | upstream H100 (300 s run) |",
        "|---|" + "---|" * (len(labels) + 1),
    ]
    for name, get, ref in rows:
        lines.append(f"| {name} | " + " | ".join(str(get(runs[k])) for k in labels) + f" | {ref} |")
    lines.append("")
    mfus = {k: r.get("mfu_percent") for k, r in runs.items() if r.get("mfu_percent")}
    if mfus:
        best = max(mfus.values())
        verdict = "met" if best >= GOAL_MFU else "NOT met"
        lines.append(f"Goal MFU >= {GOAL_MFU:g} %: {verdict} (best {best:.1f} %).")
    lines += [
        "",
        "cold: empty TORCHINDUCTOR_CACHE_DIR and TRITON_CACHE_DIR; warm: the same caches, reused. "
        "Charged training follows the profile's wall clock from the 20th batch; the warm-up row is the "
        "uncharged time of the first 20 batches (10 optimizer steps), mostly torch.compile. "
        "Corpus: CPython's standard library text (no climbmix offline), BPE 8192 trained on it.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--prepare", nargs="?", const="", metavar="DIR", help="build the cache (here, on CPU)")
    mode.add_argument("--run", action="store_true", help="run the benchmark (on the GPU machine)")
    parser.add_argument("--cache", default=None, help=f"the prepared folder (default {DEFAULT_CACHE})")
    parser.add_argument("--force", action="store_true", help="--prepare: rebuild what is already there")
    parser.add_argument("--skip-tokenizer", action="store_true", help="--prepare: corpus and pylib only")
    parser.add_argument("--extra-pythons", default=",".join(EXTRA_PYTHONS), help="--prepare: pydantic_core wheels")
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_seed_out"), help="--run: where results go")
    parser.add_argument("--work", default=None, help="--run: scratch folder (default: a new temp dir)")
    parser.add_argument("--runs", default="cold,warm", help="--run: labels of the runs, in order (first is cold)")
    parser.add_argument("--budget-seconds", type=float, default=540, help="--run: start no run past this")
    parser.add_argument("--min-run-seconds", type=float, default=150, help="--run: skip a run with less left")
    parser.add_argument("--dry-run", action="store_true", help="--run: stop after the checks and the seed")
    parser.add_argument("--train-py", default=None, help="--run: run this file, not the seed (plumbing tests)")
    parser.add_argument(
        "--max-wall-factor",
        type=float,
        default=None,
        help="--run: the runner's cap on training wall time (x budget; it includes the first batches' compile); "
        "default: the profile's",
    )
    parser.add_argument("--allow-cpu", action="store_true", help="--run: run without CUDA (plumbing tests)")
    args = parser.parse_args(argv)
    cache_arg = args.prepare if args.prepare else args.cache
    args.cache = Path(cache_arg) if cache_arg else DEFAULT_CACHE
    args.runs = [r for r in args.runs.split(",") if r]
    if args.prepare is not None:
        sys.path.insert(0, str(REPO))
        extra = [p for p in args.extra_pythons.split(",") if p]
        return prepare(args.cache.resolve(), args.force, extra, args.skip_tokenizer)
    return run_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
