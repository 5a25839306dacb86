"""Profiles for the GPUs people own, chosen from the cards' facts (no GPU needed: the facts are made up here), and
a one-GPU farm that tries its first idea at once because the GPU profiles document their noise."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainer.cards import GIB, CardFacts, parse_nvidia_smi, pick_profile
from trainer.profiles import PROFILES, get_profile
from trainer.seed import seed_source


def card(name: str, gib: float, cc: tuple[int, int] = (8, 6), bf16: bool | None = None) -> CardFacts:
    return CardFacts(name=name, memory_bytes=int(gib * GIB), capability=cc, bf16=cc >= (8, 0) if bf16 is None else bf16)


H100, H200 = card("NVIDIA H100 80GB HBM3", 79.6, (9, 0)), card("NVIDIA H200", 139.8, (9, 0))
A100_40, A6000, L40S = card("NVIDIA A100-SXM4-40GB", 39.4, (8, 0)), card("NVIDIA RTX A6000", 47.5), card(
    "NVIDIA L40S", 44.4, (8, 9))
RTX3090, RTX4090, RTX5090 = card("NVIDIA GeForce RTX 3090", 24.0), card("NVIDIA GeForce RTX 4090", 23.99, (8, 9)), \
    card("NVIDIA GeForce RTX 5090", 31.4, (12, 0))


@pytest.mark.parametrize(("cards", "profile"), [
    ([H100], "h100"), ([H200] * 8, "h100"), ([A100_40], "gpu-48gb"), ([A6000], "gpu-48gb"), ([L40S] * 4, "gpu-48gb"),
    ([RTX3090], "gpu-24gb"), ([RTX4090] * 8, "gpu-24gb"), ([RTX5090], "gpu-24gb"), ([], "cpu-tiny"),
    # two GPU classes in one box: the profile every card can run, named with both classes
    ([H100, RTX4090], "gpu-24gb"),
])
def test_the_profile_follows_the_cards_memory(cards, profile) -> None:
    pick = pick_profile(cards)
    assert pick.profile == profile, pick.reason
    if len({c.name for c in cards}) > 1:
        assert "2 GPU classes" in pick.reason and RTX4090.name in pick.reason


@pytest.mark.parametrize(("cards", "words"), [
    ([card("Tesla V100-SXM2-32GB", 31.7, (7, 0))], "compute capability 8.0"),
    ([card("Tesla T4", 14.6, (7, 5))], "compute capability 8.0"),
    ([card("NVIDIA GeForce RTX 3080", 10.0)], "22 GiB or more"),
    ([card("odd card", 48.0, (8, 0), bf16=False)], "bf16"),
    ([H100, card("Tesla V100-PCIE-16GB", 15.8, (7, 0))], "compute capability 8.0"),
])
def test_a_card_that_cannot_run_the_seed_is_refused_with_the_reason_and_the_way_out(cards, words) -> None:
    pick = pick_profile(cards)
    assert pick.profile is None and words in pick.reason and "PROFILE=cpu-tiny" in pick.reason


def test_nvidia_smi_facts_are_parsed_and_junk_is_skipped() -> None:
    text = "NVIDIA GeForce RTX 4090, 24564, 8.9\nNVIDIA H100 80GB HBM3, 81559, 9.0\n[N/A], [N/A], [N/A]\n"
    cards = parse_nvidia_smi(text)
    assert [c.name for c in cards] == ["NVIDIA GeForce RTX 4090", "NVIDIA H100 80GB HBM3"]
    assert cards[0].capability == (8, 9) and cards[0].bf16 and pick_profile(cards).profile == "gpu-24gb"


@pytest.mark.parametrize("name", ["gpu-24gb", "gpu-48gb", "h100"])
def test_every_gpu_profile_is_the_seed_with_the_same_total_batch_by_accumulation(name) -> None:
    profile = get_profile(name)
    source = seed_source(profile)
    total = int(re.search(r"^TOTAL_BATCH_SIZE = (\d+)", source, re.M).group(1))
    rows = int(re.search(r"^DEVICE_BATCH_SIZE = (\d+)", source, re.M).group(1))
    assert total == 524288 and total % (rows * profile.max_seq_len) == 0  # the seed's assert: whole micro-steps
    assert "grad_accum_steps = TOTAL_BATCH_SIZE // tokens_per_micro_step" in source
    assert profile.noise_sd == pytest.approx(0.0043)  # docs/gpu.md's prior until the card's own acceptance runs
    assert profile.eval_rows is None or profile.eval_rows <= rows
    without = {k: v for k, v in profile.model_dump().items() if k not in ("name", "description", "seed_constants",
                                                                          "eval_rows")}
    assert without == {k: v for k, v in get_profile("h100").model_dump().items() if k in without}


def test_every_profile_a_card_can_get_exists() -> None:
    from trainer.cards import TIERS

    assert {name for name, _ in TIERS} <= set(PROFILES)


def test_one_gpu_with_the_documented_noise_tries_a_candidate_by_experiment_3(tmp_path: Path, monkeypatch) -> None:
    """Item 6 of issue 28: `make farm` on one GPU (the paired policy, the h100 profile's documented sd) runs
    its first candidate by experiment 3, not after 8 baselines of main."""
    from tests.test_driver import make_farm

    monkeypatch.setenv("FARM_SURROGATE_SIGMA", "0.0043")
    monkeypatch.setenv("FARM_SURROGATE_NOISE_SEED", "0")
    farm = make_farm(tmp_path, gpus=1, profile="h100", agents={"count": 2, "kind": "mutate"}, max_experiments=6,
                     tournament={"policy": "paired"})
    assert farm.run() == 0
    kinds = [work.kind for work in farm.state.work.values()]  # in the order they were submitted
    assert "candidate" in kinds[:3], kinds
