"""The metrics' declaration: one entry per metric, from which every output takes its words.

`METRICS` gives each metric's page label and one-line explanation (the report's cards, tables, chart
legends and the map's trust colouring), its one colour (every chart draws a metric in it), its exact definition (metrics.json's "definitions", with the per-class and reference variants), its
k setting, the direction `dmd2report compare` checks, and whether it is a headline card; the README's
metrics table is written from it (`python -m dmd2report.metrics --markdown`, checked by a test).
This module imports nothing heavy: the report code reads it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One metric as every output names it: the report's pages (`label`, `explanation`, `headline`),
    metrics.json's "definitions" (`definition`, and `in_class` / `reference` for its other scopes),
    `dmd2report compare` (`higher_is_better`) and the README's table (`markdown`)."""

    label: str                        # the pages' name
    explanation: str                  # one line on the pages: what it measures
    definition: str                   # the exact formula (metrics.json, README)
    colour: str                       # its colour in every chart (bars, per-step lines, glossary swatches)
    k_setting: str | None = None      # the config key of its k, None when it has none
    higher_is_better: bool = True     # the direction `compare` counts as an improvement
    headline: bool = False            # a card on the overview page
    scope: str = "overall"            # "overall": every variant's overall entry; "per_class"; "map" (fit stage)
    in_class: str = ""                # definition of its per-class entry, "<key>_in_class" ("" = same as overall)
    reference: str = ""               # definition of the real set's own value, "<key>_real" ("" = none)
    reading: str = ""                 # how to read it where it is drawn (the map's colouring), "" = the explanation suffices


_IN_CLASS = "with X = real samples of class c, Y = samples conditioned on c"

METRICS: dict[str, Metric] = {
    "precision": Metric(
        "Precision",
        "Share of generated samples that fall inside the real data's manifold (some real sample's 3-NN ball).",
        "(1/M) #{y in Y : exists x in X, d(y,x) <= r_k(x)}, r_k(x) the distance from x to its k-th "
        "nearest other real point (Kynkaanniemi et al. 2019)",
        "#4e79a7", "metrics.k_pr", headline=True, in_class=f"precision {_IN_CLASS}, r_k within X_c"),
    "recall": Metric(
        "Recall",
        "Share of real samples that fall inside the generated samples' manifold (some generated sample's 3-NN ball).",
        "(1/N) #{x in X : exists y in Y, d(x,y) <= r_k(y)}, r_k(y) the distance from y to its k-th "
        "nearest other generated point (Kynkaanniemi et al. 2019)",
        "#f28e2b", "metrics.k_pr", headline=True, in_class=f"recall {_IN_CLASS}, r_k within Y_c"),
    "density": Metric(
        "Density",
        "How many real 5-NN balls hold a generated sample, on average, over 5: about 1 when as dense as real data.",
        "(1/(kM)) sum over y in Y, x in X of 1[d(y,x) <= r_k(x)] (Naeem et al. 2020)",
        "#59a14f", "metrics.k_dc", headline=True, in_class=f"density {_IN_CLASS}, r_k within X_c"),
    "coverage": Metric(
        "Coverage",
        "Share of real samples whose 5-NN ball holds at least one generated sample.",
        "(1/N) #{x in X : exists y in Y, d(x,y) <= r_k(x)} (Naeem et al. 2020)",
        "#e15759", "metrics.k_dc", headline=True, in_class=f"coverage {_IN_CLASS}, r_k within X_c"),
    "fd": Metric(
        "Fréchet distance",
        "Distance between Gaussians fitted to real and generated activations: 0 for identical statistics, lower is "
        "closer; read it against the real set's own value (two halves of it), as it grows when samples are few.",
        "|mu_X - mu_Y|^2 + tr S_X + tr S_Y - 2 tr sqrt(S_X^1/2 S_Y S_X^1/2), float64, eigenvalues "
        "clipped at 0, unbiased covariances, clipped at 0; biased for small sample counts",
        "#b07aa1", higher_is_better=False, headline=True,
        in_class="fd between the real samples of class c and the samples conditioned on c",
        reference="fd between two disjoint halves of the real set (each class's samples split at random, seeded by "
                  "run.seed, alternately into the halves): the value two samples of the real distribution give at "
                  "about half the real count, streamed over row chunks of the reduced features"),
    "class_fidelity": Metric(
        "Class fidelity",
        "Mean share of a generated sample's 10 nearest real samples that belong to its conditioning class.",
        "mean over generated samples with conditioning class c of the fraction of their k "
        "nearest real samples whose class is c",
        "#76b7b2", "metrics.k_fidelity", headline=True),
    "centroid_accuracy": Metric(
        "Centroid accuracy",
        "Share of generated samples whose nearest real class centre is their conditioning class.",
        "fraction of generated samples with a conditioning class whose nearest real class "
        "centroid (mean real feature of a class) is their conditioning class",
        "#9c755f",
        reference="fraction of real samples whose nearest real class centroid is their own class "
                  "(the ceiling for centroid_accuracy)"),
    "coverage_global": Metric(
        "Coverage by any sample",
        "Share of the class's real samples covered by any generated sample of this variant, whatever its class, "
        "with the whole real set's 5-NN radii (coverage uses the class's own samples and radii).",
        "fraction of the real samples of class c covered by any sample of the variant "
        "(d(x,y) <= r_k(x), r_k within the whole real set)",
        "#edc948", "metrics.k_dc", scope="per_class"),
    "trust": Metric(
        "Map trust",
        "How well the 2-D map keeps activation-space neighbourhoods: share of 10-NN kept on the map (1 = all).",
        "mean over the class-conditioned generated samples of the fraction of their k nearest real samples "
        "in the reduced feature space that are also among their k nearest real samples on the 2-D map",
        "#ff9da7", "embedding.trust_k", scope="map",
        reading="Each point's trust is the share of its 10 nearest real samples in activation space that are also "
                "among its 10 nearest real points on the map. Near 1, what lies next to the point on the map is what "
                "lies next to it in activation space; near 0, the map has torn its neighbourhood apart, so its place "
                "on the map and the clusters around it say little: trust the neighbour panel (measured in "
                "activation space) and the metrics instead."),
}


# What each row of the few-step panel compares (the trajectory stage's metrics.json "definitions" and the map page's
# words), by how the steps' features are made (`features.generated`, as for the generated sets).
STEP_REFERENCES: dict[str, dict[str, str]] = {
    "real": {
        "reencode": "each step's output image, fed back through the model as the real images are, against the real "
                    "images: the comparison of the one-step sets' metrics, so the last step reads like a generated set",
        "generation": "the activations of each step's own call (its input is noisy, a real image's is clean) against the "
                      "real images': apart by construction, so low at every step; the noised real images are the fair "
                      "reference here",
    },
    "noised real": {
        "reencode": "each step's output image against the model's outputs for real images noised to the step's σ "
                    "(both fed back as images): how far a step is from what the model makes of real data at that noise",
        "generation": "each step's activations against those of real images noised to the step's σ and passed through "
                      "the model with their class: like with like at every σ",
    },
}


def definitions() -> dict[str, str]:
    """Every definition name an entry of metrics.json may carry, with its text: each metric's own,
    its per-class scope's (`<key>_in_class`) and its real reference's (`<key>_real`)."""
    out = {}
    for key, m in METRICS.items():
        out[key] = m.definition
        if m.in_class:
            out[f"{key}_in_class"] = m.in_class
        if m.reference:
            out[f"{key}_real"] = m.reference
    return out


# ----------------------------------------------------------------------------------------------
# The README's table, from METRICS.

def markdown() -> str:
    """The metrics table of README.md ("### Metrics"), written from METRICS: each metric's name, key,
    explanation, definition, k setting (with its default) and the direction `compare` flags, then the
    definitions of the other metrics.json entries."""
    from .config import keys

    declared = keys()

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    where = {"overall": "", "per_class": " (per class only)", "map": " (in `provenance.fit`, per set)"}
    out = ["<!-- generated from METRICS in dmd2report/metric_defs.py: python -m dmd2report.metrics --markdown -->",
           "| metric | key | what it measures | definition | k | `compare` flags |", "|---|---|---|---|---|---|"]
    for key, m in METRICS.items():
        k = f"{declared[m.k_setting].default} (`{m.k_setting}`)" if m.k_setting else ""
        out.append("| " + " | ".join([cell(m.label), f"`{key}`{where[m.scope]}", cell(m.explanation), cell(m.definition),
                                      k, "not compared" if m.scope == "map" else "a drop" if m.higher_is_better
                                      else "a rise"]) + " |")
    out += ["", "Per-class entries and the real set's reference carry their own definitions in metrics.json:", ""]
    out += [f"- `{name}`: {text}" for name, text in definitions().items()
            if name not in METRICS]
    return "\n".join(out) + "\n"
