"""One real proposal against the real Messages API: does the Claude agent work with this key and model?

``make farm-live-check`` / ``python -m agent.live_check [--model M] [--profile P]``. It proposes one change
to the profile's seed train.py (nothing is trained), then prints the diff, the description, the notes and
what it cost. Without ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY_FILE) it says so and exits 0: CI never needs
it. The key is never printed.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

from agent.llm import ApiKeyMissing, read_api_key

PROGRAM = Path(__file__).resolve().parent.parent / "program.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="farm-live-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="Anthropic model (default: the agent's)")
    parser.add_argument("--profile", default="cpu-tiny", help="whose seed train.py to start from")
    parser.add_argument("--max-turns", type=int, default=12)
    args = parser.parse_args(argv)
    try:
        read_api_key()
    except ApiKeyMissing as exc:
        print(f"farm-live-check: skipped: {exc}")
        return 0

    from agent.claude import ClaudeProposer
    from agent.protocol import Context, ProposalError
    from trainer.profiles import get_profile
    from trainer.seed import seed_source

    seed = seed_source(get_profile(args.profile))
    options = {"model": args.model} if args.model else {}
    proposer = ClaudeProposer("claude-0", max_turns=args.max_turns, **options)
    context = Context(program=PROGRAM.read_text(), profile=args.profile, parent_commit="seed", parent_train_py=seed)
    print(f"farm-live-check: one proposal by {proposer.model} from the {args.profile} seed ...", flush=True)
    try:
        proposal = proposer.propose(context)
    except ProposalError as exc:  # report it like the farm would, with what it spent
        spend = exc.failure.spend
        cost = f" (spent ${spend.cost_usd:.4f})" if spend else ""
        print(f"farm-live-check: FAILED: {exc.failure.headline()}{cost}", file=sys.stderr)
        return 1
    diff = difflib.unified_diff(seed.splitlines(keepends=True), proposal.train_py.splitlines(keepends=True),
                                "a/train.py", "b/train.py")
    print("".join(diff))
    print(f"description: {proposal.description}")
    for note in proposal.notes:
        print(f"note: {note}")
    turns = (proposal.transcript or {}).get("turns")
    print(f"cost: ${proposal.cost_usd:.4f} | {turns} turn(s) | tokens in {proposal.tokens_in} out "
          f"{proposal.tokens_out} cache read {proposal.cache_read_tokens} write {proposal.cache_write_tokens}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
