"""Which profile a machine's GPUs can run: the seed on the cards people own, not only on an H100.

    python -m trainer.cards        prints the profile name (exit 0), or why none fits (stderr, exit 2)

The seed trains in bf16 under torch.compile, and its H100 batch (128 rows of 2048 tokens) peaks at 46 GB; on a
24 GB card every experiment would end ``oom``. So the profile follows the card: its memory picks the device
batch (the total batch is kept by gradient accumulation, so the seed trains the same model on the same tokens
per step), its compute capability and bf16 support decide whether the seed can run at all. The choice is
:func:`pick_profile`, a pure function of the cards' facts, so it is tested without a GPU; :func:`query_cards`
reads the facts from torch when CUDA is there, else from ``nvidia-smi``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

from pydantic import BaseModel, ConfigDict

GIB = 1024**3


class CardFacts(BaseModel):
    """What the choice of a profile needs to know about one GPU."""

    model_config = ConfigDict(frozen=True)

    name: str
    memory_bytes: int
    capability: tuple[int, int]
    bf16: bool

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


class ProfilePick(BaseModel):
    """The profile for a machine's cards (None: none fits) and why, in words ``farm doctor`` prints."""

    model_config = ConfigDict(frozen=True)

    profile: str | None
    reason: str


# (profile, at least this much memory per card, in GiB): the largest that fits wins. Each profile's device batch
# and evaluation rows are in trainer/profiles.py; the bounds leave the evaluator's copy room beside the candidate.
TIERS: tuple[tuple[str, float], ...] = (("h100", 70.0), ("gpu-48gb", 38.0), ("gpu-24gb", 22.0))
MIN_CAPABILITY = (8, 0)  # bf16 tensor cores and FA2/FA3-class kernels: Ampere or newer


def pick_profile(cards: list[CardFacts]) -> ProfilePick:
    """The profile every card of the machine can run, judged by the smallest and oldest card among them.

    A farm runs one profile (one seed, one batch), so a box with two GPU classes gets the profile of the card
    with the least memory; its results are still judged per GPU class, as every run's are.
    """
    if not cards:
        return ProfilePick(profile="cpu-tiny", reason="no CUDA GPU: the CPU profile cpu-tiny")
    weakest = min(cards, key=lambda c: (c.memory_bytes, c.capability))
    classes = sorted({c.name for c in cards})
    mixed = f" (the smallest of {len(classes)} GPU classes: {', '.join(classes)})" if len(classes) > 1 else ""
    facts = f"{weakest.name}, {weakest.memory_gib:.0f} GiB, compute capability {weakest.capability[0]}." \
            f"{weakest.capability[1]}{', bf16' if weakest.bf16 else ', no bf16'}{mixed}"
    old = min(c.capability for c in cards)
    if old < MIN_CAPABILITY or not all(c.bf16 for c in cards):
        return ProfilePick(profile=None, reason=(
            f"{facts}: the seed trains in bf16 with torch.compile, which needs compute capability "
            f"{MIN_CAPABILITY[0]}.{MIN_CAPABILITY[1]} (Ampere) or newer with bf16; no profile runs it on this "
            "card. Run the farm on newer GPUs (or GPUS=N to leave this one out), or on the CPU with "
            "PROFILE=cpu-tiny"))
    for name, floor in TIERS:
        if weakest.memory_gib >= floor:
            return ProfilePick(profile=name, reason=f"{facts}: {name}, the largest profile whose memory "
                               f"({floor:.0f} GiB or more per card) the card has")
    smallest = TIERS[-1]
    return ProfilePick(profile=None, reason=(
        f"{facts}: the seed needs {smallest[1]:.0f} GiB or more per card (profile {smallest[0]}: the candidate "
        "and the evaluator share the card); no profile fits. Use cards with more memory, or PROFILE=cpu-tiny"))


def parse_nvidia_smi(text: str) -> list[CardFacts]:
    """``nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv,noheader,nounits`` (MiB) as facts."""
    cards = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.rsplit(",", 2)]
        if len(parts) != 3 or not parts[1].isdigit():
            continue
        try:
            major, minor = (int(x) for x in parts[2].split(".", 1))
        except ValueError:
            continue
        cards.append(CardFacts(name=parts[0], memory_bytes=int(parts[1]) * 1024**2, capability=(major, minor),
                               bf16=(major, minor) >= MIN_CAPABILITY))
    return cards


def query_cards() -> list[CardFacts]:
    """This machine's CUDA GPUs: from torch when it sees CUDA, else from nvidia-smi, else none."""
    try:
        import torch

        if torch.cuda.is_available():
            props = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
            return [CardFacts(name=p.name, memory_bytes=p.total_memory, capability=(p.major, p.minor),
                              bf16=(p.major, p.minor) >= MIN_CAPABILITY) for p in props]
    except Exception:  # a broken torch: nvidia-smi still knows the cards
        pass
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,compute_cap",
                              "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_nvidia_smi(out.stdout) if out.returncode == 0 else []


def main() -> int:
    pick = pick_profile(query_cards())
    if pick.profile is None:
        print(f"no profile fits this machine's GPUs: {pick.reason}", file=sys.stderr)
        return 2
    print(pick.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
