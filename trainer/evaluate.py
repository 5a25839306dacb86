"""The trusted evaluator: scores a handed-over model on the pinned validation shard.

    python -m trainer.evaluate --profile NAME     (started by the runner; one JSON request on stdin)

It runs beside the runner, as the runner's user, and never imports the
candidate's code: the model arrives as an exported graph (trainer.handover),
the validation text is tokenized here with the harness's own tokenizer, and
the loss is computed here from the model's logits (log-softmax over every
logit the model returns, so a model cannot choose its own normalisation).
Before the score counts, a causality check perturbs every row after a cut
position (every position is a cut in some row) and requires the logits up to
the cut to stay the same: a model that reads the token it is asked to predict
fails it. The process is started before the candidate so that a candidate
that exhausts processes or memory cannot stop its own evaluation from starting.
"""

from __future__ import annotations

import argparse
import hashlib
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


def _log_probs(module, x: torch.Tensor, vocab: int, device: str) -> torch.Tensor:
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
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


def _batches(data: torch.Tensor, batch: int):
    """(index, rows) with every batch exactly ``batch`` rows (the exported shape): the last is padded by wrapping."""
    n = data.size(0)
    for start in range(0, n, batch):
        idx = [(start + i) % n for i in range(batch)]
        yield min(batch, n - start), data[idx]


def causality_check(module, data: torch.Tensor, batch: int, vocab: int, device: str, seed: int) -> float:
    """Largest change in log-probabilities at or before a cut when every token after it is replaced.

    Row i of the check is validation row i (mod n) cut at position perm[i]: the cuts cover every
    position, at positions the model cannot predict (the permutation is drawn here, per run).
    """
    T = data.size(1) - 1
    g = torch.Generator().manual_seed(seed)
    cuts = torch.randperm(T, generator=g)
    rows = data[torch.arange(T) % data.size(0), :-1]
    donors = data[(torch.arange(T) + 1 + torch.randint(0, max(1, data.size(0) - 1), (1,), generator=g)) % data.size(0), :-1]
    worst = 0.0
    for start in range(0, T, batch):
        idx = [(start + i) % T for i in range(batch)]
        x, cut = rows[idx], cuts[idx]
        after = torch.arange(T)[None, :] > cut[:, None]
        x2 = torch.where(after, donors[idx], x)
        a = _log_probs(module, x.to(device), vocab, device)
        b = _log_probs(module, x2.to(device), vocab, device)
        if not torch.isfinite(a).all():
            continue  # the scoring pass runs these rows too: its val_bpb is not finite, and the status says so
        change = float((a - b).abs().amax(dim=-1).masked_fill(after.to(device), 0.0).max().item())
        if not math.isfinite(change):
            return math.inf
        worst = max(worst, change)
    return worst


def score(blob: bytes, profile: Profile, cache: Path, batch: int, device: str, seed: int) -> dict:
    """Everything the runner records about the evaluation; raises HandoverError/EvaluationError if it cannot score."""
    started = time.monotonic()
    module = load_program(blob, device)
    loaded = time.monotonic()
    data, token_bytes, files = validation_rows(profile, cache)
    vocab = profile.vocab_size
    tolerance = CAUSAL_TOLERANCE["cuda" if device == "cuda" else "cpu"]
    worst = causality_check(module, data, batch, vocab, device, seed)
    if not worst <= tolerance:
        raise EvaluationError(
            f"the model looks ahead: its log-probabilities at or before a position changed by {worst:.3g} "
            f"(tolerance {tolerance:g}) when only later tokens changed, so it reads the tokens it is scored on"
        )
    nats = torch.zeros((), dtype=torch.float64)
    nbytes = torch.zeros((), dtype=torch.int64)
    for real, rows in _batches(data, batch):
        x, y = rows[:, :-1], rows[:, 1:]
        logp = _log_probs(module, x.to(device), vocab, device)[:real].cpu()
        y = y[:real]
        nll = -logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).double()
        b = token_bytes[y]
        nats += (nll * (b > 0)).sum()
        nbytes += b.sum()
    val_bpb = float(nats / (math.log(2) * nbytes))
    if device == "cuda":
        torch.cuda.synchronize()
    return dict(
        val_bpb=val_bpb if math.isfinite(val_bpb) else str(val_bpb),
        tokens=int(data.size(0) * profile.max_seq_len),
        files=files,
        causal_max_change=worst,
        load_seconds=loaded - started,
        seconds=time.monotonic() - started,
        device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
        weights_sha256=hashlib.sha256(split_sections(blob)["state_dict"]).hexdigest(),
        peak_vram_mb=torch.cuda.max_memory_allocated() / 1024**2 if device == "cuda" else None,
    )


def serve(profile: Profile, cache: Path) -> int:
    """Wait for one request line {"program": path, "batch": n, "seed": n}; answer one JSON line."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if profile.torch_threads:
        torch.set_num_threads(profile.torch_threads)
    print(json.dumps({"ready": True}), flush=True)
    line = sys.stdin.readline()
    if not line:
        return 0  # the candidate never handed a model over
    request = json.loads(line)
    try:
        with open(request["program"], "rb") as f:
            blob = f.read()
        reply = score(blob, profile, cache, int(request["batch"]), device, int(request["seed"]))
    except (HandoverError, EvaluationError) as exc:
        reply = {"rejected": str(exc)}
    except torch.OutOfMemoryError as exc:
        reply = {"oom": str(exc).splitlines()[0]}
    except Exception as exc:  # a model that breaks in an unforeseen way is still the candidate's
        reply = {"rejected": f"the model failed in evaluation: {type(exc).__name__}: {exc}"[:1000]}
    print(json.dumps(reply), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", required=True)
    args = parser.parse_args(argv)
    return serve(get_profile(args.profile), cache_dir())


if __name__ == "__main__":
    sys.exit(main())
