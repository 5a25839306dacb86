"""The trusted evaluator: scores a handed-over model on the pinned validation shard.

    python -m trainer.evaluate --profile NAME     (started by the runner; one JSON request on stdin)

It runs beside the runner, as the runner's user, and never imports the
candidate's code: the model arrives as an exported graph (trainer.handover),
the validation text is tokenized here with the harness's own tokenizer, and
the loss is computed here from the model's logits (log-softmax over every
logit the model returns, so a model cannot choose its own normalisation).
Before the score counts, a causality check perturbs rows after a cut
position (every position is a cut in some row) and requires the
log-probabilities of the targets up to the cut to stay what the scoring pass
found: a model that reads the token it is asked to predict fails it. The
process is started before the candidate so that a candidate
that exhausts processes or memory cannot stop its own evaluation from starting.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import importlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from trainer.data import BOS_TOKEN
from trainer.handover import HandoverError, load_program, split_sections
from trainer.profiles import Profile, cache_dir, get_profile
from trainer.textdata import Tokenizer, documents, packed_rows, split_files

# How far the log-probabilities up to a cut may move when only later tokens change: float noise, never information.
CAUSAL_TOLERANCE = {"cpu": 1e-3, "cuda": 2e-2}
FINGERPRINT_TOKENS = 512  # scored positions whose log-probabilities stand for the model's predictions


def fingerprint(scored: torch.Tensor, k: int = FINGERPRINT_TOKENS) -> str:
    """The model's log-probabilities of ``k`` evenly spaced validation targets, as base64 of little-endian float32.

    Two runs are the same run when they *predict* the same, whatever their weights look like: a digest of the
    weights is fooled by a one-ulp nudge and a distance between weights by a permutation of hidden units, but
    log-probabilities are what the score is made of. To look independent, a script would have to move its
    predictions as far as an honest replicate on another seed does, and that costs it the score it is after.
    The positions are fixed (every run of a profile scores the same rows), so fingerprints compare one to one.
    """
    flat = scored.reshape(-1).float()
    at = torch.linspace(0, flat.numel() - 1, min(k, flat.numel())).round().long()
    values = flat[at].nan_to_num(nan=0.0, posinf=0.0, neginf=-1e4).numpy().astype("<f4")
    return base64.b64encode(values.tobytes()).decode()


class EvaluationError(RuntimeError):
    """The model cannot be scored (it does not load, has the wrong output, or looks ahead)."""


def validation_rows(profile: Profile, cache: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(rows (n, T+1) int64, token byte lengths, files read): the fixed evaluation set, packed like training."""
    tokenizer = Tokenizer.load(profile.tokenizer_dir(cache), BOS_TOKEN, profile.name)
    with open(profile.tokenizer_dir(cache) / "token_bytes.pt", "rb") as f:
        token_bytes = torch.load(f, map_location="cpu", weights_only=True)
    files_read: list[str] = []
    rows = packed_rows(tokenizer, profile.max_seq_len, documents(split_files(profile, cache, "val"), files_read))
    n_rows = profile.eval_tokens // profile.max_seq_len
    data = torch.tensor([next(rows)[0] for _ in range(n_rows)], dtype=torch.long)
    return data, token_bytes, [os.path.basename(p) for p in files_read]


def _log_probs(module, x: torch.Tensor, vocab: int, device: str, fp32: bool = False) -> torch.Tensor:
    on_gpu = device == "cuda" and not fp32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if on_gpu else torch.autocast(
        "cuda" if device == "cuda" else "cpu", enabled=False)
    with torch.no_grad(), autocast:
        logits = module(x.clone())
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise EvaluationError(f"model(idx) returned {type(logits).__name__}, not a floating-point logits tensor")
    if logits.dim() != 3 or tuple(logits.shape[:2]) != tuple(x.shape) or logits.shape[2] < vocab:
        raise EvaluationError(
            f"model(idx) must return logits of shape (B, T, >= {vocab}) for input {tuple(x.shape)}, "
            f"got {tuple(logits.shape)}"
        )
    return torch.log_softmax(logits.float(), dim=-1)


def _target_log_probs(module, x: torch.Tensor, y: torch.Tensor, vocab: int, device: str,
                      fp32: bool = False) -> torch.Tensor:
    """log p(y[t] | x[..t]) at every position, on the CPU, float32: (B, T) from inputs and targets (B, T)."""
    logp = _log_probs(module, x.to(device), vocab, device, fp32)
    return logp.gather(-1, y.to(device).unsqueeze(-1)).squeeze(-1).cpu()


def causality_check(module, data: torch.Tensor, scored: torch.Tensor, batch: int, vocab: int, device: str,
                    seed: int, mode: str = "scored") -> float:
    """Largest change of a target's log-probability at or before a cut when every input token after it changes.

    Check row i is validation row i (mod n), cut at position perm[i] (a permutation of all T positions drawn here,
    per run): every position is a cut once, where the model cannot predict it. Its tokens after the cut come from
    another row; its log-probabilities of the *original* targets up to the cut must equal the reference's. A model
    that reads a later token at any position moves the probability of its target there. The reference (``mode``,
    the profile's ``causal_check``): the scoring pass's (``scored``); ``rerun``, the same rows unperturbed in the
    check's own batch, so a GPU's batch-shape noise is not counted; ``fp32``, both passes without autocast.
    """
    n, T = data.size(0), data.size(1) - 1
    g = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(T, generator=g)
    which = torch.arange(T) % n
    shift = 1 + int(torch.randint(0, max(1, n - 1), (1,), generator=g))
    worst = 0.0
    for start in range(0, T, batch):
        idx = torch.tensor([(start + i) % T for i in range(batch)])
        rows, donors, cut = data[which[idx]], data[(which[idx] + shift) % n], cuts[idx]
        after = torch.arange(T)[None, :] > cut[:, None]  # input positions after the cut
        perturbed = torch.where(after, donors[:, :-1], rows[:, :-1])
        reference = scored[which[idx]]
        if not torch.isfinite(reference).all():
            continue  # the scoring pass's val_bpb is not finite: the status says so
        fp32 = mode == "fp32"
        if mode != "scored":
            reference = _target_log_probs(module, rows[:, :-1], rows[:, 1:], vocab, device, fp32)
        moved = (_target_log_probs(module, perturbed, rows[:, 1:], vocab, device, fp32) - reference).abs()
        change = float(moved.masked_fill(after, 0.0).max().item())
        if not math.isfinite(change):
            return math.inf
        worst = max(worst, change)
    return worst


def causal_tolerance(profile: Profile, device: str) -> float:
    """How far a log-probability at or before the cut may move: the profile's figure, else the device's float noise
    (a check in float32 has the CPU's)."""
    if profile.causal_tolerance is not None:
        return profile.causal_tolerance
    return CAUSAL_TOLERANCE["cuda" if device == "cuda" and profile.causal_check != "fp32" else "cpu"]


def is_oom(exc: BaseException) -> bool:
    """Whether an exception (or what caused it) is the device or the host running out of memory.

    A model too big for what is free is the candidate's ``oom``, never the farm's ``error``: CUDA says so in more
    than one way (torch's OutOfMemoryError, a cuBLAS or CUDA "out of memory" RuntimeError), and a wrapper such as
    the loader's HandoverError keeps the cause.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
            return True
        text = str(exc)
        if "out of memory" in text.lower() or "CUBLAS_STATUS_ALLOC_FAILED" in text:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def reply_for(exc: BaseException) -> dict:
    """The evaluator's answer for a model it could not score: oom, else the refusal with its reason."""
    if is_oom(exc):
        return {"oom": (str(exc).splitlines() or [type(exc).__name__])[0][:500]}
    if isinstance(exc, (HandoverError, EvaluationError)):
        return {"rejected": str(exc)}
    return {"rejected": f"the model failed in evaluation: {type(exc).__name__}: {exc}"[:1000]}


def score(blob: bytes, profile: Profile, cache: Path, batch: int, device: str, seed: int) -> dict:
    """Everything the runner records about the evaluation; raises HandoverError/EvaluationError if it cannot score."""
    started = time.monotonic()
    module = load_program(blob, device)
    loaded = time.monotonic()
    data, token_bytes, files = validation_rows(profile, cache)
    vocab, (n, T) = profile.vocab_size, (data.size(0), data.size(1) - 1)
    scored = torch.empty((n, T), dtype=torch.float32)
    for start in range(0, n, batch):  # exactly the exported batch size: the last batch wraps, its extra rows dropped
        real = min(batch, n - start)
        rows = data[[(start + i) % n for i in range(batch)]]
        scored[start : start + real] = _target_log_probs(module, rows[:, :-1], rows[:, 1:], vocab, device)[:real]
    y = data[:, 1:]
    counted = token_bytes[y]
    val_bpb = float(-(scored.double() * (counted > 0)).sum() / (math.log(2) * counted.sum()))
    checked = time.monotonic()
    worst = causality_check(module, data, scored, batch, vocab, device, seed, profile.causal_check) \
        if math.isfinite(val_bpb) else 0.0
    tolerance = causal_tolerance(profile, device)
    if not worst <= tolerance:
        raise EvaluationError(
            f"the model looks ahead: its log-probability of a target at or before a position changed by {worst:.3g} "
            f"(tolerance {tolerance:g}) when only later tokens changed, so it reads the tokens it is scored on"
        )
    if device == "cuda":
        torch.cuda.synchronize()
    return dict(
        val_bpb=val_bpb if math.isfinite(val_bpb) else str(val_bpb),
        tokens=int(n * profile.max_seq_len),
        files=files,
        causal_max_change=worst,
        load_seconds=loaded - started,
        check_seconds=time.monotonic() - checked,
        seconds=time.monotonic() - started,
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        weights_sha256=hashlib.sha256(split_sections(blob)["state_dict"]).hexdigest(),
        fingerprint=fingerprint(scored),
        peak_vram_mb=torch.cuda.max_memory_allocated() / 1024**2 if device == "cuda" else None,
    )


def serve(profile: Profile, cache: Path) -> int:
    """Wait for one request line {"program": path, "batch": n, "seed": n}; answer one JSON line."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)
    print(json.dumps({"ready": True}), flush=True)
    # While the candidate starts up (not charged to it): torch's export deserializer takes ~1.3 s to import.
    importlib.import_module("torch._export.serde.serialize")

    line = sys.stdin.readline()
    if not line:
        return 0  # the candidate never handed a model over
    request = json.loads(line)
    try:
        with open(request["program"], "rb") as f:
            blob = f.read()
        reply = score(blob, profile, cache, int(request["batch"]), device, int(request["seed"]))
    except Exception as exc:  # a model that breaks in an unforeseen way is still the candidate's
        reply = reply_for(exc)
    print(json.dumps(reply), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True)
    args = parser.parse_args(argv)
    return serve(get_profile(args.profile), cache_dir())


if __name__ == "__main__":
    sys.exit(main())
