"""The evaluator beside the candidate on one device (issue 28, items 4 and 5), what of it a CPU can test: the
hand-over's batch sized to the memory left, an evaluator that runs out of memory ending ``oom`` (never the farm's
``error``), and the causality check's reference and tolerance as the profile's choice."""

from __future__ import annotations

import pytest
import torch

from tests.test_handover import Bigram, Peek
from trainer.evaluate import (
    CAUSAL_TOLERANCE,
    _target_log_probs,
    causal_tolerance,
    causality_check,
    is_oom,
    reply_for,
)
from trainer.handover import HandoverError, eval_rows, release_cache
from trainer.profiles import get_profile

GB = 1 << 30
T, V = 2048, 8192


def test_the_evaluators_rows_are_the_batch_within_the_cap_and_the_free_memory() -> None:
    assert eval_rows(128, None, None, T, V, 0) == 128  # a CPU: no device memory to plan on
    assert eval_rows(64, 16, None, T, V, 0) == 16  # the profile's cap (gpu-24gb)
    assert eval_rows(128, None, 75 * GB, T, V, 200 << 20) == 128  # an H100 after the candidate's cache went back
    assert eval_rows(128, None, 8 * GB, T, V, 200 << 20) < 40  # a crowded card: fewer rows, never zero
    assert eval_rows(128, None, 1 << 20, T, V, 200 << 20) == 1


def test_releasing_the_cache_is_a_no_op_without_cuda() -> None:
    assert release_cache("cpu") is None


def _raised(exc: BaseException, cause: BaseException | None = None) -> BaseException:
    try:
        try:
            if cause is not None:
                raise cause
        finally:
            raise exc
    except BaseException as caught:  # noqa: BLE001 - the chain is what is tested
        return caught


@pytest.mark.parametrize("exc", [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB"),
    RuntimeError("CUDA error: out of memory"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    MemoryError(),
    _raised(HandoverError("the exported program does not load"), MemoryError()),
])
def test_an_evaluator_out_of_memory_is_oom_however_it_is_raised(exc) -> None:
    assert is_oom(exc) and "oom" in reply_for(exc)


@pytest.mark.parametrize("exc", [HandoverError("calls 'torch.ops.x.y'"), ValueError("shape mismatch")])
def test_anything_else_the_model_does_is_a_refusal(exc) -> None:
    assert not is_oom(exc) and "rejected" in reply_for(exc)


def test_the_runner_classifies_the_evaluators_oom_as_oom() -> None:
    from trainer.result import Status, Summary
    from trainer.runner import Observer, classify

    obs = Observer(get_profile("cpu-smoke"), 0.0, 60.0)
    status, reason = classify(obs, 0, None, "", Summary(), {"oom": "CUDA out of memory"})
    assert status is Status.OOM and "evaluator" in reason


@pytest.mark.parametrize("mode", ["scored", "rerun", "fp32"])
def test_every_reference_of_the_causality_check_passes_an_honest_model_and_catches_a_look_ahead(mode) -> None:
    torch.manual_seed(0)
    data = torch.randint(0, 260, (6, 65))
    for model, honest in ((Bigram(), True), (Peek(every=16, at=5), False)):
        scored = _target_log_probs(model, data[:, :-1], data[:, 1:], 260, "cpu")
        worst = causality_check(model, data, scored, 4, 260, "cpu", seed=1, mode=mode)
        assert (worst <= 1e-5) if honest else (worst > 1e-1), (mode, worst)


def test_the_tolerance_is_the_profiles_else_the_devices() -> None:
    h100 = get_profile("h100")
    assert causal_tolerance(h100, "cuda") == CAUSAL_TOLERANCE["cuda"]
    assert causal_tolerance(h100, "cpu") == CAUSAL_TOLERANCE["cpu"]
    fp32 = h100.model_copy(update={"causal_check": "fp32"})
    assert causal_tolerance(fp32, "cuda") == CAUSAL_TOLERANCE["cpu"]
    measured = h100.model_copy(update={"causal_check": "rerun", "causal_tolerance": 2e-3})
    assert causal_tolerance(measured, "cuda") == 2e-3


@pytest.mark.parametrize(("dies", "verdict"), [("os.kill(os.getpid(), signal.SIGKILL)", "oom"),
                                                ("sys.exit(3)", None)])
def test_an_evaluator_killed_while_scoring_is_oom_one_that_exits_is_the_farms_fault(tmp_path, dies, verdict) -> None:
    """The kernel's OOM killer takes the evaluator (a model too big for the memory left): the candidate's oom.
    An evaluator that exits by itself without a verdict stays the farm's error (the runner's failure)."""
    import os
    import subprocess
    import sys

    from trainer.runner import Observer, _Scorer

    evaluator = subprocess.Popen([sys.executable, "-c", f"import os, signal, sys; sys.stdin.readline(); {dies}"],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    obs = Observer(get_profile("cpu-smoke"), 0.0, 60.0)
    handover = tmp_path / "model.handover"
    handover.write_bytes(b"x")
    read_end, write_end = os.pipe()
    scorer = _Scorer(evaluator, obs, handover, tmp_path / "copy", write_end)
    obs.handover_ready.set()
    scorer.run()
    if verdict:
        assert "oom" in scorer.verdict and "SIGKILL" in scorer.verdict["oom"] and not scorer.failure
        assert b"error" in os.read(read_end, 4096)  # the candidate is told it was not scored
    else:
        assert scorer.verdict is None and "without a verdict" in scorer.failure
    os.close(read_end)
    os.close(write_end)
