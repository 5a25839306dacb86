"""The agent pool: which agent is asked for a proposal, and when.

Asking costs money (an LLM call) and its answer is only worth what is new since the last one, so the pool
keeps each agent in one of four places: idle (may be asked), asking (a request is out), parked (its last
proposals came to nothing; it waits for the next finished experiment) or gone (a fatal failure). A population
that keeps coming back empty-handed is the pool's verdict to report: the loop stops on it instead of paying
without end.
"""

from __future__ import annotations

from collections.abc import Iterator

# An agent whose last proposals came to nothing (rejected or failed) this many times in a row waits for the
# next finished experiment (new information) before it is asked again, while anything runs that will finish.
PARK_AFTER = 2
# Proposals in a row, across all agents, that came to nothing: the agents cannot produce anything new.
STUCK_MIN_PROPOSALS = 20
STUCK_PER_AGENT = 4


class AgentPool:
    """Idle, asking and parked agents of one population, by index, and the streaks that park or stop them."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.idle: list[int] = list(range(count))
        self.asking: set[int] = set()
        self.parked: list[int] = []
        self._streak: dict[int, int] = {}  # agent index -> its own proposals in a row that came to nothing
        self.unproductive = 0  # proposals in a row, over all agents, that were rejected or failed
        self.last_unproductive = ""

    def to_ask(self, wanted: int) -> Iterator[int]:
        """Agents to ask now, each marked asking, until ``wanted`` requests are out or no agent is idle."""
        while self.idle and len(self.asking) < wanted:
            index = self.idle.pop(0)
            self.asking.add(index)
            yield index

    def returned(self, index: int, agent: str, nothing: str, *, fatal: bool = False, more_coming: bool = True) -> str:
        """An agent's request came back; returns why the whole population is stuck ("" while it is not).

        ``nothing``: why its proposal came to nothing ("" when one was queued); ``more_coming``: whether anything
        runs or waits that will finish and give a parked agent something new. An agent stuck repeating itself
        (or an API that always fails) is parked instead of being asked again at full speed: every ask costs
        money and the answers carry nothing new until a new result does.
        """
        self.asking.discard(index)
        stuck = ""
        if not nothing:
            self._streak[index], self.unproductive = 0, 0
        else:
            self._streak[index] = self._streak.get(index, 0) + 1
            self.unproductive += 1
            self.last_unproductive = f"{agent}: {nothing}"
            if self.unproductive >= max(STUCK_MIN_PROPOSALS, STUCK_PER_AGENT * self.count):
                stuck = (f"no agent proposed anything new in the last {self.unproductive} proposals; the last: "
                         f"{self.last_unproductive}")
        if fatal:
            return stuck
        if nothing and self._streak[index] >= PARK_AFTER and more_coming:
            self.parked.append(index)
        else:
            self.idle.append(index)
        return stuck

    def new_result(self) -> None:
        """An experiment finished: something new to propose from, so parked agents may be asked again."""
        self.idle += self.parked
        self.parked = []

    def can_be_asked(self) -> bool:
        """Whether any agent is or may be working on a proposal."""
        return bool(self.asking or self.idle)

    def stuck(self) -> str:
        """Why no agent can propose anything new, when only parked agents are left ("" otherwise)."""
        if self.parked and not self.can_be_asked():
            return (f"no agent can propose anything new: {self.unproductive} proposal(s) in a row came to "
                    f"nothing, the last: {self.last_unproductive}")
        return ""
