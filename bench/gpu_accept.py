"""The GPU acceptance run of issue 28: one command, no network, about 8 minutes on one GPU.

    bash bench/gpu_accept.sh                 # on a GPU machine (cache: bench/gpu_seed.py --prepare)
    bash bench/gpu_accept.sh --allow-cpu     # the same steps on this CPU, cpu-smoke sizes (tests/test_gpu_accept.py)

Through the trusted runner (``trainer.runner.run``), one after another, each cut off if the time is short:

1. the seed, cold (empty compile caches) and warm, under the card's profile with a 60 s budget
   (trainer/cards.py picks it: h100-60s, gpu-48gb-60s, gpu-24gb-60s); then, in this process, on the warm seed's
   handed-over model: the causality check's three references (scored, rerun, fp32), what an honest model moves in
   each, and the val_bpb gain a look-ahead just under the tolerance could buy, in sd of the measured noise;
2. a third run of the seed, for the noise (sd over the three);
3. an upstream-style model whose attention is a registered operator under FA3's real name (a stand-in), which the
   evaluator must run through its reference (trainer/kernels.py);
4. three hostile candidates (tests/hostile/): a forged exported program, a look-ahead, training before the first
   batch (this one needs the candidate to run as another user: root only).

Where the ``kernels`` package loads FA3: the reference against the real kernel, and the evaluator loading a real
FA3 graph. It writes ``gpu_accept.json`` and
``gpu-accept-<card>.md`` to --out (and the .md to --docs), after every step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.gpu_seed import Report, _on_sigterm, _utc_now, gpu_facts, say, setup_environment  # noqa: E402

UPSTREAM_MFU = 39.8  # upstream autoresearch's seed on one H100 (docs/gpu.md)
HOSTILE = {"forged program": "forged_program.py", "look-ahead": "lookahead.py",
           "training before the first batch": "pretrain_before_first_batch.py"}
GRACE_SECONDS = 100  # a run started just before the budget may take this long beyond it (the guard: budget + 120)
GOALS_H100 = {"mfu": 40.0, "trusted_eval_share": 0.05, "warm_overhead_s": 30.0, "spare_gib": 8.0}

STANDIN_FA3 = '''
import torch
import torch.nn.functional as F

# A stand-in for Flash Attention 3 under its real operator name (flash_attn_3::_flash_attn_forward), so the graph
# the harness exports calls a registered kernel, as upstream's does; the evaluator runs its own reference instead.
_fa3 = torch.library.Library("flash_attn_3", "FRAGMENT")
_fa3.define("_flash_attn_forward(Tensor q, Tensor k, Tensor v, float? softmax_scale=None, bool causal=False, "
            "int window_size_left=-1, int window_size_right=-1, float softcap=0.0) -> (Tensor, Tensor, Tensor, Tensor)")


def _forward(q, k, v, softmax_scale=None, causal=False, window_size_left=-1, window_size_right=-1, softcap=0.0):
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                                       scale=softmax_scale).transpose(1, 2).contiguous()
    lse = q.new_zeros((q.size(0), q.size(2), q.size(1)), dtype=torch.float32)
    return o, lse, q.new_empty((0,)), q.new_empty((0,))


def _fake(q, k, v, *args, **kwargs):
    lse = q.new_empty((q.size(0), q.size(2), q.size(1)), dtype=torch.float32)
    return torch.empty_like(q), lse, q.new_empty((0,)), q.new_empty((0,))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:3])
    ctx.scale, ctx.causal = inputs[3], inputs[4]


def _backward(ctx, grad, *unused):
    q, k, v = ctx.saved_tensors
    with torch.enable_grad():
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=ctx.causal, scale=ctx.scale).transpose(1, 2)
        dq, dk, dv = torch.autograd.grad(o, (q, k, v), grad)
    return dq, dk, dv, None, None, None, None, None


for _key in ("CPU", "CUDA"):  # like the real kernel: a device implementation, a fake, an autograd formula
    _fa3.impl("_flash_attn_forward", _forward, _key)
torch.library.register_fake("flash_attn_3::_flash_attn_forward", _fake, lib=_fa3)
torch.library.register_autograd("flash_attn_3::_flash_attn_forward", _backward, setup_context=_setup, lib=_fa3)
'''


def upstream_fa3_source() -> str:
    """tests/candidates.py's upstream-style train.py with its attention through the stand-in FA3 operator."""
    from tests.candidates import UPSTREAM_STYLE

    sdpa = ("        q, k, v = (t.view(B, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))\n"
            "        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)\n"
            "        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))\n")
    fa3 = ("        q, k, v = (t.view(B, T, n_head, C // n_head) for t in (q, k, v))\n"
           "        y = torch.ops.flash_attn_3._flash_attn_forward(q, k, v, causal=True)[0]\n"
           "        return self.c_proj(y.contiguous().view(B, T, C))\n")
    assert sdpa in UPSTREAM_STYLE, "tests/candidates.py's UPSTREAM_STYLE changed its attention"
    return STANDIN_FA3 + UPSTREAM_STYLE.replace(sdpa, fa3).replace("torch.manual_seed(42)", _ON_DEVICE)


# Tiny models, written for a CPU: on a GPU their tensors must be where the harness's batches are.
_ON_DEVICE = "torch.manual_seed(42)\ntorch.set_default_device('cuda' if torch.cuda.is_available() else 'cpu')"


def _on_device(source: str) -> str:
    return re.sub(r"^import torch$", "import torch\n" + _ON_DEVICE.split("\n")[1], source, count=1, flags=re.M)


def _facts(result, profile) -> dict:
    """One run's figures: verdict, the overhead split, memory, MFU."""
    f, s = result.facts, result.summary
    scoring = None
    if f.eval_seconds is not None and f.eval_load_seconds is not None:
        scoring = f.eval_seconds - f.eval_load_seconds - (f.eval_check_seconds or 0.0)
    return {
        "status": result.status.value, "reason": result.reason, "val_bpb": result.val_bpb, "device": result.device,
        "startup_s": f.startup_seconds, "compile_s": f.warmup_seconds, "training_s": f.training_seconds,
        "handover_s": f.handover_seconds, "eval_load_s": f.eval_load_seconds, "scoring_s": scoring,
        "causal_check_s": f.eval_check_seconds, "eval_s": f.eval_seconds, "total_s": f.total_seconds,
        "overhead_s": f.total_seconds - f.training_seconds if f.total_seconds else None,
        "handover_mb": f.handover_bytes / 2**20 if f.handover_bytes else None,
        "candidate_peak_mb": s.peak_vram_mb, "evaluator_peak_mb": f.eval_peak_vram_mb, "mfu_percent": s.mfu_percent,
        "num_steps": s.num_steps, "causal_max_change": f.causal_max_change, "profile": profile.name,
    }


class Runs:
    """Runs files through the trusted runner in a work dir, each cut to the time left, recorded in the report."""

    def __init__(self, report: Report, work: Path, deadline: float, separate: bool) -> None:
        self.report, self.work, self.deadline, self.separate = report, work, deadline, separate

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, label: str, source: str, profile_name: str, seed: int = 0, caches: dict | None = None,
            uid: int | None = None) -> dict | None:
        from trainer.profiles import get_profile
        from trainer.runner import run

        profile = get_profile(profile_name)
        if self.left() <= 0:
            self.report.data["runs"][label] = {"status": "skipped", "reason": "not enough time left"}
            self.report.save()
            return None
        run_dir = self.work / f"run-{label.replace(' ', '-')}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        (run_dir / "train.py").write_text(source)
        os.environ.update(caches or {})  # GPU runs only, one at a time (the runner passes FARM_PROFILE itself)
        self.report.data["stage"] = label
        say(f"\n== {label}: {profile.name}, {self.left():.0f} s left")
        if uid is not None:
            for path in (self.work, run_dir):
                path.chmod(0o755)  # the candidate's user must reach its work dir (mkdtemp's is 0700)
        try:
            result = run(run_dir / "train.py", run_dir / "out", profile, seed=seed,
                         wall_limit=min(profile.wall_limit, max(30.0, self.left() + GRACE_SECONDS)),
                         candidate_uid=uid)
        except Exception as exc:  # e.g. the candidate's user cannot reach this Python: said, not fatal
            self.report.data["runs"][label] = {"status": "skipped", "reason": f"{type(exc).__name__}: {exc}"}
            self.report.save()
            return None
        info = _facts(result, profile)
        if uid is not None and info["status"] == "error" and "Permission denied" in info["reason"]:
            info.update(status="skipped", reason=f"the candidate's user cannot run this Python: {info['reason']}")
        for name in ("run.log", "result.json"):
            if (run_dir / "out" / name).exists():
                shutil.copy2(run_dir / "out" / name, self.report.out / f"{run_dir.name}-{name}")
        self.report.data["runs"][label] = info
        self.report.save()
        say(f"== {label}: {info['status']} {info['reason'][:160]} | val_bpb {info['val_bpb']} | total "
            f"{info['total_s']:.1f} s")
        return info


def measure_causality(report: Report, run_dir: Path, profile_name: str, device: str) -> None:
    """What an honest model's check moves under each reference, and the gain a look-ahead under it could buy."""
    import torch

    from trainer.evaluate import CAUSAL_TOLERANCE, _target_log_probs, causality_check, validation_rows
    from trainer.handover import load_program
    from trainer.profiles import cache_dir, get_profile

    files = sorted(run_dir.rglob("model.handover"))
    if not files:
        report.data["causality"] = {"skipped": "no handed-over model kept by the warm seed run"}
        return
    profile = get_profile(profile_name)
    blob = files[0].read_bytes()
    module = load_program(blob, device)
    batch = _exported_batch(module)
    data, token_bytes, _ = validation_rows(profile, cache_dir())
    rows = data[: max(batch, 2 * batch)]
    scored = torch.cat([_target_log_probs(module, rows[i:i + batch, :-1], rows[i:i + batch, 1:], profile.vocab_size,
                                          device) for i in range(0, rows.size(0) - batch + 1, batch)])
    rows = rows[: scored.size(0)]
    y = rows[:, 1:]
    bytes_per_token = float(token_bytes[y][token_bytes[y] > 0].float().mean())
    out = {"bytes_per_token": bytes_per_token, "batch": batch, "rows": int(rows.size(0)), "modes": {}}
    for mode in ("scored", "rerun", "fp32"):
        t0 = time.monotonic()
        worst = causality_check(module, rows, scored, batch, profile.vocab_size, device, seed=7, mode=mode)
        tol = CAUSAL_TOLERANCE["cpu" if mode == "fp32" or device != "cuda" else "cuda"]
        out["modes"][mode] = {"honest_max_change": worst, "seconds": time.monotonic() - t0, "tolerance": tol,
                              "gain_bpb_bound": tol / math.log(2) / bytes_per_token}
        say(f"causality ({mode}): honest model moves {worst:.3g}; tolerance {tol:g}")
    report.data["causality"] = out


def _exported_batch(module) -> int:
    for node in module.graph.nodes:
        if node.op == "placeholder" and "val" in node.meta and getattr(node.meta["val"], "dtype", None) is not None:
            import torch

            if node.meta["val"].dtype == torch.long:
                return int(node.meta["val"].shape[0])
    return 1


def kernel_parity(report: Report, device: str) -> None:
    """The reference against the real FA3 where `kernels` loads it (bf16, causal), and the evaluator on its graph."""
    if device != "cuda":
        report.data["kernel_parity"] = {"skipped": "no CUDA device"}
        return
    import torch

    from trainer.kernels import reference_attention

    try:
        from kernels import get_kernel

        repo = "varunneal/flash-attention-3" if torch.cuda.get_device_capability() == (9, 0) else \
            "kernels-community/flash-attn3"
        fa3 = get_kernel(repo).flash_attn_interface.flash_attn_func
    except Exception as exc:
        report.data["kernel_parity"] = {"skipped": f"FA3 does not load here ({type(exc).__name__}: {exc})"[:300]}
        return
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 2048, 4, 128, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    real = fa3(q, k, v, causal=True)
    real = real[0] if isinstance(real, tuple) else real
    ref = reference_attention(q, k, v, None)
    diff = float((real.float() - ref.float()).abs().max())

    from trainer.handover import export_model, load_program, split_sections

    class One(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(256, 512)
            self.head = torch.nn.Linear(512, 256)

        def forward(self, idx):
            x = self.emb(idx).view(idx.size(0), idx.size(1), 4, 128).to(torch.bfloat16)
            y = fa3(x, x, x, causal=True)
            y = y[0] if isinstance(y, tuple) else y
            return self.head(y.float().reshape(idx.size(0), idx.size(1), 512))

    info = {"repo": repo, "max_abs_diff_bf16": diff}
    try:
        blob = export_model(One().cuda().eval(), 2, 256, "cuda")
        info["targets"] = sorted(set(re.findall(r'"target": "(torch\.ops\.[^"]+)"',
                                                split_sections(blob)["program"].decode())) - {""})
        load_program(blob, "cuda")
        info["evaluator"] = "loads the exported FA3 graph through its reference"
    except Exception as exc:
        info["evaluator"] = f"{type(exc).__name__}: {exc}"[:400]
    report.data["kernel_parity"] = info


def goals(d: dict, card_gib: float | None) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, met) for the issue's goals, from what was measured (None: not measured here)."""
    runs = d.get("runs", {})
    warm = runs.get("seed warm") or {}
    seeds = [r["val_bpb"] for k, r in runs.items() if k.startswith("seed") and r.get("val_bpb") is not None]
    sd = statistics.stdev(seeds) if len(seeds) >= 2 else None
    d["noise"] = {"val_bpb": seeds, "sd": sd}
    rows: list[tuple[str, str, bool | None]] = []
    mfu = warm.get("mfu_percent")
    rows.append((f"MFU >= {GOALS_H100['mfu']:.0f} % with SDPA (upstream {UPSTREAM_MFU} %)",
                 f"{mfu:.1f} %" if mfu else "n/a", mfu >= GOALS_H100["mfu"] if mfu else None))
    trusted = [warm.get(k) for k in ("handover_s", "eval_load_s", "causal_check_s")]
    if all(t is not None for t in trusted):
        share = sum(trusted) / 300
        rows.append(("trusted evaluation (export + hand-over + load + causality check) <= 5 % of 300 s",
                     f"{sum(trusted):.1f} s = {100 * share:.1f} %", share <= GOALS_H100["trusted_eval_share"]))
    over = warm.get("overhead_s")
    rows.append((f"warm per-experiment overhead <= {GOALS_H100['warm_overhead_s']:.0f} s",
                 f"{over:.1f} s" if over is not None else "n/a",
                 over <= GOALS_H100["warm_overhead_s"] if over is not None else None))
    peaks = [warm.get("candidate_peak_mb"), warm.get("evaluator_peak_mb")]
    if card_gib and all(p for p in peaks):
        spare = card_gib - sum(peaks) / 1024
        rows.append((f"candidate and evaluator fit with >= {GOALS_H100['spare_gib']:.0f} GB to spare",
                     f"{spare:.1f} GiB spare", spare >= GOALS_H100["spare_gib"]))
    rows.append(("val_bpb sd over 3 seed runs", f"{sd:.4f} over {len(seeds)}" if sd is not None else "n/a",
                 None if sd is None else len(seeds) >= 3))
    return rows


def render(d: dict) -> str:
    runs = d.get("runs", {})
    lines = [f"# GPU acceptance: {d.get('card', '?')} ({d.get('finished_at') or d.get('started_at')})", "",
             f"`bash bench/gpu_accept.sh{' --allow-cpu' if d.get('allow_cpu') else ''}` (bench/gpu_accept.py): "
             f"profile {d.get('profile')}, smoke profile {d.get('smoke_profile')}, torch "
             f"{d.get('torch', {}).get('version')}, {d.get('elapsed_s', 0):.0f} s in all.", ""]
    if d.get("allow_cpu"):
        lines += ["**CPU rehearsal (--allow-cpu): the steps, not GPU figures.**", ""]
    cols = ["status", "val_bpb", "startup_s", "compile_s", "training_s", "handover_s", "eval_load_s", "scoring_s",
            "causal_check_s", "total_s", "overhead_s", "candidate_peak_mb", "evaluator_peak_mb", "mfu_percent"]
    lines += ["| run | " + " | ".join(cols) + " | reason |", "|---" * (len(cols) + 2) + "|"]
    for label, r in runs.items():
        cells = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {str(r.get('reason', ''))[:120]} |")
    lines += ["", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for goal, measured, met in d.get("goals", []):
        lines.append(f"| {goal} | {measured} | {'yes' if met else 'no' if met is False else 'n/a'} |")
    c = d.get("causality", {})
    lines += ["", "## Causality check on the warm seed's model", ""]
    if "modes" in c:
        sd = (d.get("noise") or {}).get("sd") or 0.0043
        lines += [f"{c['rows']} rows, batch {c['batch']}, {c['bytes_per_token']:.2f} bytes per token; noise sd "
                  f"{sd:.4f}.", "", "| reference | honest max change | tolerance | look-ahead gain bound (bpb) | "
                  "in sd | seconds |", "|---|---|---|---|---|---|"]
        for mode, m in c["modes"].items():
            lines.append(f"| {mode} | {m['honest_max_change']:.3g} | {m['tolerance']:g} | "
                         f"{m['gain_bpb_bound']:.4f} | {m['gain_bpb_bound'] / sd:.2f} | {m['seconds']:.1f} |")
    else:
        lines.append(str(c.get("skipped", "not measured")))
    lines += ["", "## FA3 against the evaluator's reference", "", "```", json.dumps(d.get("kernel_parity"),
                                                                                     indent=1), "```", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--allow-cpu", action="store_true", help="run the steps on the CPU (cpu-smoke sizes)")
    parser.add_argument("--cache", type=Path, default=REPO / "bench" / "gpu-cache",
                        help="GPU: the folder bench/gpu_seed.py --prepare made (data, tokenizer, pylib)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / "gpu_accept_out")))
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "bench")
    parser.add_argument("--budget-seconds", type=float, default=450.0, help="no run starts after this")
    args = parser.parse_args(argv)
    started = time.monotonic()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out)
    report.save = _saver(report, args.docs)  # type: ignore[method-assign]
    report.data.update(allow_cpu=args.allow_cpu, started_at=_utc_now())
    work = Path(tempfile.mkdtemp(prefix="gpu-accept-"))
    report.data["work"] = str(work)
    signal.signal(signal.SIGTERM, _on_sigterm(report))
    if not args.allow_cpu and (code := setup_environment(args.cache.resolve(), work, report)) is not None:
        return code
    cuda = gpu_facts(report, out)
    if not cuda and not args.allow_cpu:
        return report.fail("setup", "no CUDA device: run on a GPU machine, or pass --allow-cpu for a rehearsal", 2)
    from trainer.cards import pick_profile, query_cards
    from trainer.data import prepare_profile
    from trainer.profiles import get_profile

    if cuda:
        pick = pick_profile(query_cards())
        if pick.profile is None:
            return report.fail("profile", pick.reason, 2)
        seed_profile, smoke, card = f"{pick.profile}-60s", "gpu-smoke", report.data["gpu"]["name"]
        card_gib = report.data["gpu"]["memory_gib"]
    else:
        seed_profile, smoke, card, card_gib = "cpu-smoke", "cpu-smoke", "cpu", None
        prepare_profile(get_profile("cpu-smoke"))
    report.data.update(profile=seed_profile, smoke_profile=smoke, card=card)
    from trainer.seed import seed_source

    seed = seed_source(get_profile(seed_profile))
    runs = Runs(report, work, started + args.budget_seconds, separate=os.geteuid() == 0)
    compile_caches = {"TORCHINDUCTOR_CACHE_DIR": str(work / "inductor"), "TRITON_CACHE_DIR": str(work / "triton")}
    caches = {"caches": compile_caches} if cuda else {}
    if not cuda:
        import torch

        torch.set_num_threads(1)  # this process's own measurements, beside the runs' processes
    # One at a time, on a CPU too: two cpu-smoke runs at once on a loaded 2-core machine run past the warm-up
    # allowance and end invalid, rightly, which is not what the rehearsal is for. The noise runs first, then
    # the model's causality (while nothing else uses the card), then the kernel and hostile candidates.
    runs.run("seed cold", seed, seed_profile, seed=0, **caches)
    runs.run("seed warm", seed, seed_profile, seed=1, **caches)
    report.data["stage"] = "causality"
    try:
        measure_causality(report, work / "run-seed-warm", seed_profile, "cuda" if cuda else "cpu")
    except Exception as exc:  # a measurement that fails is reported, the rest stands
        report.data["causality"] = {"skipped": f"{type(exc).__name__}: {exc}"[:400]}
    runs.run("seed third", seed, seed_profile, seed=2, **caches)
    runs.run("upstream-style, FA3 stand-in", upstream_fa3_source(), smoke)
    for label, name in HOSTILE.items():
        source = (REPO / "tests" / "hostile" / name).read_text()
        needs_uid = "Needs: separation" in source
        if needs_uid and not runs.separate:
            report.data["runs"][label] = {"status": "skipped", "reason": "needs root (the candidate as another user)"}
            continue
        runs.run(label, _on_device(source) if cuda else source, smoke, uid=65534 if needs_uid else None)
    kernel_parity(report, "cuda" if cuda else "cpu")
    report.data["goals"] = goals(report.data, card_gib)
    report.data.update(stage="done", finished_at=_utc_now(), elapsed_s=time.monotonic() - started)
    report.save()
    shutil.rmtree(work, ignore_errors=True)
    expected = {"seed cold": "ok", "seed warm": "ok", "upstream-style, FA3 stand-in": "ok"}
    bad = [k for k, v in expected.items() if report.data["runs"].get(k, {}).get("status") not in (v, "skipped")]
    bad += [k for k in HOSTILE if report.data["runs"].get(k, {}).get("status") == "ok"]
    say(f"\ngpu_accept: {'FAILED: ' + ', '.join(bad) if bad else 'every step as expected'}; {out}")
    return 1 if bad else 0


def _saver(report: Report, docs: Path):
    """Report.save for this script: gpu_accept.json and gpu-accept-<card>.md in --out, the .md again in --docs."""

    def save() -> None:
        d = report.data
        slug = re.sub(r"[^a-z0-9]+", "-", str(d.get("card", "unknown")).lower()).strip("-") or "unknown"
        text = render(d)
        tmp = report.out / "gpu_accept.json.tmp"
        tmp.write_text(json.dumps(d, indent=2, default=str) + "\n")
        os.replace(tmp, report.out / "gpu_accept.json")
        (report.out / f"gpu-accept-{slug}.md").write_text(text)
        docs.mkdir(parents=True, exist_ok=True)
        (docs / f"gpu-accept-{slug}.md").write_text(text)

    return save


if __name__ == "__main__":
    sys.exit(main())
