"""What every policy reads: the core settings (parent selection, pairing, the noise prior, main's baseline), and
the protocol a policy module's class fills so that the factory can build it (cluster/decisions/policies/__init__.py)."""

from __future__ import annotations

from typing import ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cluster.decisions.policy import Policy, Strategies
from cluster.decisions.view import NoisePrior
from trainer.profiles import Profile


class CoreSettings(BaseModel):
    """The settings every policy reads; a policy's own model adds its knobs (cluster/decisions/policies/<name>.py)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    named_defaults: ClassVar[dict[str, dict[str, object]]] = {}  # policy name -> the defaults it stands for

    policy: str = Field("tournament", description="the policy (cluster/decisions/policies/): tournament, paired (the "
                        "tournament with PAIRED_DEFAULTS), stack or greedy")
    baseline_replicates: int = Field(4, ge=2, description="times main is measured (at start, after a promotion, "
                                     "on a new GPU class) so its noise is known before anything is promoted")
    parent_main_prob: float = Field(0.7, ge=0, le=1, description="share of proposals whose parent is main's head")
    tournament_size: int = Field(3, ge=1, description="branches drawn at random; the best of them is the parent")
    pool_recent: int = Field(32, ge=1, description="only this many most recent near-misses may be parents")
    judge_against: Literal["main", "parent"] = Field("main", description="parent: a candidate whose parent is a "
                                                     "former main (measured >= baseline_replicates times) is judged "
                                                     "against that parent, so a gain proposed before main moved is "
                                                     "not lost; the driver then merges it into main and the merge is "
                                                     "judged against main like any candidate")
    pairing: Literal["unpaired", "auto"] = Field(
        "unpaired", description="auto: main and the candidates judged against it run on the same seeds, and the "
        "judge weighs each candidate's runs against main's on the same seeds as far as the farm's own measurements "
        "show that a seed's noise is shared by every file (SeedNoise); where it is not, the comparison is unpaired")
    noise_prior_sd: float | None = Field(None, gt=0, description="the noise sd judging starts from before the "
                                         "farm measured its own (None: the profile's documented figure, "
                                         "Profile.noise_sd); used only with noise_prior_df > 0")
    noise_prior_shared: float | None = Field(None, ge=0, lt=1, description="the share of the noise's variance that "
                                             "is common to every file run on one seed, before the farm measured "
                                             "it (None: the profile's documented figure, Profile.noise_shared, "
                                             "else 0: nothing shared, no pairing until the runs show it); weighs "
                                             "noise_prior_df like the sd")
    noise_prior_df: int = Field(0, ge=0, description="how many degrees of freedom the prior sd counts as: "
                                "candidates are judged from the start instead of after min_noise_df of main's "
                                "replicates, and the farm's own measurements outweigh the prior as they come; "
                                "0: no prior (main is measured until its noise is known)")
    second_chances: int = Field(0, ge=0, description="an edit discarded after a single run may be proposed and run "
                                "again this many times (on another seed; its runs pool), so that one unlucky run "
                                "does not lose a real small gain for good")

    @model_validator(mode="before")
    @classmethod
    def _named_defaults(cls, data: object) -> object:
        """A policy name that stands for a set of defaults (a settings model's ``named_defaults``: paired, stack)
        fills them into every field the settings do not name themselves."""
        if isinstance(data, dict):
            for klass in cls.__mro__:
                if defaults := vars(klass).get("named_defaults", {}).get(data.get("policy")):
                    return {**defaults, **data}
        return data

    def noise_prior(self, profile: Profile | None = None) -> NoisePrior:
        """The prior the farm's noise starts from: these settings, else ``profile``'s documented noise (its sd and
        the share shared per seed). The one source of it, for the judge and for what agents are shown."""
        sd, shared = self.noise_prior_sd, self.noise_prior_shared
        if profile is not None and sd is None and profile.noise_sd:
            sd = profile.noise_sd
        if profile is not None and shared is None and profile.noise_shared is not None:
            shared = profile.noise_shared
        return NoisePrior(sd=sd, df=self.noise_prior_df, shared=shared)


class PolicyClass(Protocol):
    """A policy module's class: its settings model, and built from those settings and the run's strategies."""

    settings_model: ClassVar[type[CoreSettings]]

    def __call__(self, settings: CoreSettings, strategies: Strategies) -> Policy: ...
