"""Pages of the analyses still to come: what each will answer, show, and build on.

The app is a shell for five analyses (DESIGN.md). Until an analysis lands, its page says
which analysis comes there, the question it answers, what its views will show and which
paper it implements — and that nothing is computed yet. No fake results.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import panel as pn
import param


@dataclass(frozen=True)
class Planned:
    slug: str
    title: str
    question: str
    source: str
    will_show: tuple[str, ...]
    needs: str


PLANNED: tuple[Planned, ...] = (
    Planned(
        "bounds",
        "IBP tightness",
        "How loose are interval bounds through this network, layer by layer?",
        "“Understanding Certified Training with Interval Bound Propagation” (ICLR 2024)",
        (
            "the tightness ratio of interval bounds to optimal box bounds after every layer;",
            "how it grows with depth and width, for an input radius you choose;",
            "the trained model against its untrained twin.",
        ),
        "a model with an architecture and a batch of inputs.",
    ),
    Planned(
        "lipschitz",
        "Lipschitz",
        "How smooth is the function: certified upper bound vs. empirical lower bound?",
        "“Some Intriguing Aspects about Lipschitz Continuity of Neural Networks” (ICLR 2024)",
        (
            "the product-of-spectral-norms upper bound next to the empirical lower bound "
            "(largest input-gradient norm found);",
            "the gap between them by layer and along training checkpoints.",
        ),
        "a model with an architecture and data to probe the gradients with.",
    ),
    Planned(
        "connectivity",
        "Connectivity",
        "Is there a low-loss linear path between two models, before and after permutation alignment?",
        "Git Re-Basin weight matching (ICLR 2023); “Analysis of LMC via Permutation-Based Weight "
        "Matching” (2024); REPAIR",
        (
            "loss and accuracy along the straight line between two models, naive and after "
            "weight matching (and with REPAIR's renormalisation);",
            "the barrier height, and which layers the permutation changes most.",
        ),
        "two models of the same architecture (two seeds, or two checkpoints) and data.",
    ),
)


class PlaceholderPage(pn.viewable.Viewer):
    """The page of an analysis that is not in this version yet."""

    model = param.Parameter(default=None, doc="The picked model (kept for when the analysis lands).")

    def __init__(self, planned: Planned, picker: Any = None, settings: Any = None, **params: Any):
        super().__init__(**params)
        self.planned = planned
        self.slug, self.title, self.question = planned.slug, planned.title, planned.question
        self.picker = picker
        shows = "\n".join(f"- {s}" for s in planned.will_show)
        self.main = pn.Column(
            pn.pane.Markdown(f"## {planned.title}\n{planned.question}", css_classes=["nnv-page-head"]),
            pn.pane.Alert(
                f"**Not available yet.** The {planned.title} analysis is planned for a coming release of "
                "nnvitals; this page computes nothing and shows no results until then.",
                alert_type="warning",
                sizing_mode="stretch_width",
                css_classes=["nnv-placeholder"],
            ),
            pn.pane.Markdown(
                f"**What it will show**\n\n{shows}\n\n**What it needs**: {planned.needs}\n\n"
                f"**Method**: {planned.source}.",
                sizing_mode="stretch_width",
            ),
            sizing_mode="stretch_width",
            css_classes=["nnv-page", f"nnv-{planned.slug}"],
        )
        self.controls = pn.Column(
            pn.pane.Markdown(f"#### {planned.title}\nNo settings yet.", css_classes=["nnv-note"]),
            sizing_mode="stretch_width",
        )

    def __panel__(self):
        return self.main


def placeholder_factory(planned: Planned):
    """A page constructor with the signature every page has: ``(picker=..., settings=...)``."""

    def make(picker: Any = None, settings: Any = None) -> PlaceholderPage:
        return PlaceholderPage(planned, picker=picker, settings=settings)

    make.__name__ = f"{planned.title}Page"
    return make
