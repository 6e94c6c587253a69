"""The metrics, each one declared unit: its words, its direction and its formula over the shared evidence.

`METRICS` gives each metric's page label and one-line explanation (the report's cards, tables, chart legends and
the map's trust colouring), its one colour (every chart draws a metric in it), its exact definition (metrics.json's
"definitions", with the per-class and reference variants), its k setting, the direction `dmd2report compare`
checks, whether it is a headline card, and how it is computed: `compute` takes the `Evidence` of one scope (a
generated set against the real set, overall or within one class, in one feature space), which the measure engine
(`metrics.measure`) builds once from its exact k-NN passes and hands to every metric. Adding a metric is one
entry here; adding evidence (an encoder's logits, a classifier's predictions) is one field of `Evidence` that the
engine fills where a feature space has it, and the metrics that need it name it. The README's metrics table is
written from `METRICS` (`python -m dmd2report.metrics --markdown`, checked by a test). This module imports numpy
alone: the report code reads it without torch, k-NN or the engine.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable, Mapping

import numpy as np


@dataclass(frozen=True)
class Evidence:
    """What every metric of one scope is computed from, made once by the measure engine. Per-point arrays are over
    the scope's own rows (its real points, its generated samples); a field is None where the scope has no such
    evidence, and a metric that `needs` it then has no entry there."""

    settings: Mapping[str, int | float]   # the measure's settings (k_pr, k_dc, k_fidelity, ...): each metric's k
    n_real: int                 # real points in the scope
    n_generated: int            # generated samples in the scope
    n_set: int                  # samples of the whole generated set, whatever their class
    gen: np.ndarray             # (M, D) the scope's generated features
    # per point: inside some real point's r_k_pr ball (None: too few real points for the radii); the real r_k_dc
    # balls holding it; per real point: some generated sample in its r_k_dc ball; inside some generated sample's
    # r_k_pr ball (None: too few generated samples)
    gen_in_real_manifold: np.ndarray | None = None    # (M,) bool
    gen_density_count: np.ndarray | None = None       # (M,) int
    real_covered: np.ndarray | None = None            # (N,) bool
    real_in_gen_manifold: np.ndarray | None = None    # (N,) bool
    real_moments: tuple | None = None           # (mean, covariance, its square root) of the real rows, float64
    cond: np.ndarray | None = None              # (C,) class of the samples conditioned on one; None: no real classes
    nn_real_class: np.ndarray | None = None     # (C, k_fidelity) classes of their nearest real samples
    centroid_class: np.ndarray | None = None    # (C,) class of their nearest real class centroid
    real_covered_global: np.ndarray | None = None   # (N,) covered by any sample of the set, whole-set radii
    # A standard feature space's (an encoder's, dmd2report/encoders/): its classifier's top-1 class of the samples
    # conditioned on one, in the data's class ids (-1: a class the data has not); its score logits (Inception's) of
    # every sample; a published reference set's (mean, covariance) in the space.
    gen_predicted: np.ndarray | None = None     # (C,) int
    gen_score_logits: np.ndarray | None = None  # (M, classes) float
    reference_moments: tuple | None = None      # (mean, covariance), float64


@dataclass(frozen=True)
class Metric:
    """One metric: how every output names it (the report's pages: `label`, `explanation`, `headline`; metrics.json's
    "definitions": `definition`, `in_class`, `reference`; `dmd2report compare`: `higher_is_better`; the README's
    table: `markdown`) and how the measure engine computes its entries (`compute` and the fields after it)."""

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
    reference_in_class: str = ""      # definition of a class's own value, "<key>_real_in_class" ("" = none)
    reading: str = ""                 # how to read it where it is drawn (the map's colouring), "" = the explanation suffices
    # How the engine computes it (None: measured elsewhere, as trust by the fit stage). `compute(evidence)` returns
    # per-point values whose mean is the metric (an array), or the value itself; None (or no points) where the scope
    # is too small for the definition.
    compute: Callable[[Evidence], np.ndarray | float | None] | None = None
    needs: tuple[str, ...] = ()       # Evidence fields without which a scope has no entry of it
    bootstrap: bool = False           # a percentile interval over its per-point values (`ci_low`, `ci_high`)
    counts: str = "scope"             # its entries' n_generated: "scope", "conditioned" (samples with a class) or "set"
    array: str = ""                   # its per-point values, overall, kept as this per-sample array for the report
    real_reference: bool = False      # the engine scores the real set with it as if generated: the `reference` value

    def __post_init__(self):   # a declaration the engine would misread fails at import
        unknown = set(self.needs) - {f.name for f in fields(Evidence)}
        if self.scope not in ("overall", "per_class", "map") or self.counts not in ("scope", "conditioned", "set") \
                or unknown:
            raise ValueError(f"metric {self.label!r}: scope {self.scope!r}, counts {self.counts!r}, "
                             f"needs unknown evidence {sorted(unknown)}")

    def k(self, settings: Mapping) -> int | None:
        """Its k among the measure's settings (`metrics.k_dc` -> settings["k_dc"])."""
        return None if self.k_setting is None else settings[self.k_setting.split(".", 1)[1]]


# ----------------------------------------------------------------------------------------------
# The Frechet distance of two Gaussians, FD's formula (float64, symmetric eigendecompositions).

def mean_and_cov(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(feats, dtype=np.float64)
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False, ddof=1))


def sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix, eigenvalues clipped at 0."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_from_stats(mu_x, cov_x, mu_y, cov_y, sqrt_cov_x=None) -> float:
    r = sqrt_psd(cov_x) if sqrt_cov_x is None else sqrt_cov_x
    m = r @ cov_y @ r
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    fd = float(np.sum((mu_x - mu_y) ** 2) + np.trace(cov_x) + np.trace(cov_y) - 2 * tr_sqrt)
    return max(fd, 0.0)   # a squared distance; a tiny negative value is rounding


def _inception_score(e: Evidence) -> float | None:
    """The Inception Score of the scope's samples (torch-fidelity's protocol: 10 splits, shuffled with seed 2020)."""
    from .encoders.stats import inception_score

    return inception_score(e.gen_score_logits)[0] if len(e.gen_score_logits) >= 10 else None


def _fd_reference(e: Evidence) -> float | None:
    if e.n_generated < 2:
        return None
    return frechet_from_stats(*e.reference_moments, *mean_and_cov(e.gen))


def _fd(e: Evidence) -> float | None:
    """FD of the scope's generated samples against the real rows' moments (whose square root is made once)."""
    if e.n_generated < 2:
        return None
    mu, cov, sqrt_cov = e.real_moments
    return frechet_from_stats(mu, cov, *mean_and_cov(e.gen), sqrt_cov_x=sqrt_cov)


_IN_CLASS = "with X = real samples of class c, Y = samples conditioned on c"

METRICS: dict[str, Metric] = {
    "precision": Metric(
        "Precision",
        "Share of generated samples that fall inside the real data's manifold (some real sample's 3-NN ball).",
        "(1/M) #{y in Y : exists x in X, d(y,x) <= r_k(x)}, r_k(x) the distance from x to its k-th "
        "nearest other real point (Kynkaanniemi et al. 2019)",
        "#4e79a7", "metrics.k_pr", headline=True, in_class=f"precision {_IN_CLASS}, r_k within X_c",
        compute=lambda e: e.gen_in_real_manifold, bootstrap=True, array="gen_in_real_manifold"),
    "recall": Metric(
        "Recall",
        "Share of real samples that fall inside the generated samples' manifold (some generated sample's 3-NN ball).",
        "(1/N) #{x in X : exists y in Y, d(x,y) <= r_k(y)}, r_k(y) the distance from y to its k-th "
        "nearest other generated point (Kynkaanniemi et al. 2019)",
        "#f28e2b", "metrics.k_pr", headline=True, in_class=f"recall {_IN_CLASS}, r_k within Y_c",
        compute=lambda e: e.real_in_gen_manifold, bootstrap=True),
    "density": Metric(
        "Density",
        "How many real 5-NN balls hold a generated sample, on average, over 5: about 1 when as dense as real data.",
        "(1/(kM)) sum over y in Y, x in X of 1[d(y,x) <= r_k(x)] (Naeem et al. 2020)",
        "#59a14f", "metrics.k_dc", headline=True, in_class=f"density {_IN_CLASS}, r_k within X_c",
        compute=lambda e: None if e.gen_density_count is None else e.gen_density_count / e.settings["k_dc"],
        bootstrap=True, array="gen_density"),
    "coverage": Metric(
        "Coverage",
        "Share of real samples whose 5-NN ball holds at least one generated sample.",
        "(1/N) #{x in X : exists y in Y, d(x,y) <= r_k(x)} (Naeem et al. 2020)",
        "#e15759", "metrics.k_dc", headline=True, in_class=f"coverage {_IN_CLASS}, r_k within X_c",
        compute=lambda e: e.real_covered, bootstrap=True, array="real_covered"),
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
                  "about half the real count, streamed over row chunks of the reduced features",
        reference_in_class="fd between the real samples of class c in the two halves of fd_real (the class's rows "
                           "split alternately): the value two samples of the class's real distribution give at about "
                           "half the class's real count, the scale a class's fd reads against",
        compute=_fd, needs=("real_moments",)),   # its references: `metrics.fd_real_halves` (streamed) and
                                                 # `metrics.fd_real_halves_per_class`, by the stage
    "class_fidelity": Metric(
        "Class fidelity",
        "Mean share of a generated sample's 10 nearest real samples that belong to its conditioning class.",
        "mean over generated samples with conditioning class c of the fraction of their k "
        "nearest real samples whose class is c",
        "#76b7b2", "metrics.k_fidelity", headline=True,
        compute=lambda e: (e.nn_real_class == e.cond[:, None]).mean(axis=1), needs=("cond",), counts="conditioned",
        array="gen_fidelity"),
    "centroid_accuracy": Metric(
        "Centroid accuracy",
        "Share of generated samples whose nearest real class centre is their conditioning class.",
        "fraction of generated samples with a conditioning class whose nearest real class "
        "centroid (mean real feature of a class) is their conditioning class",
        "#9c755f",
        reference="fraction of real samples whose nearest real class centroid is their own class "
                  "(the ceiling for centroid_accuracy)",
        compute=lambda e: e.centroid_class == e.cond, needs=("cond",), counts="conditioned", real_reference=True),
    "coverage_global": Metric(
        "Coverage by any sample",
        "Share of the class's real samples covered by any generated sample of this variant, whatever its class, "
        "with the whole real set's 5-NN radii (coverage uses the class's own samples and radii).",
        "fraction of the real samples of class c covered by any sample of the variant "
        "(d(x,y) <= r_k(x), r_k within the whole real set)",
        "#edc948", "metrics.k_dc", scope="per_class",
        compute=lambda e: e.real_covered_global, needs=("real_covered_global",), counts="set"),
    "classification_accuracy": Metric(
        "Classification accuracy",
        "Share of generated samples that a pretrained classifier assigns to their conditioning class (the DINOv2 "
        "linear head, the demo classifier): which classes the generator draws recognisably.",
        "fraction of generated samples with a conditioning class whose top-1 class by the feature space's classifier "
        "is that class",
        "#499894", headline=True,
        reference="the classifier's top-1 accuracy on the real images (the ceiling for classification_accuracy)",
        compute=lambda e: e.gen_predicted == e.cond, needs=("cond", "gen_predicted"), counts="conditioned",
        bootstrap=True, real_reference=True),
    "inception_score": Metric(
        "Inception Score",
        "How confidently and how diversely Inception-v3 classifies the samples: high when each image is one clear "
        "class and the classes are many (it ignores the real images; compare it with theirs).",
        "exp(E_x KL(p(y|x) || p(y))), p(y|x) the softmax of Inception-v3's 1008 logits without bias, p(y) their "
        "mean: the mean over 10 splits of the samples, shuffled with seed 2020 (torch-fidelity's ISC protocol)",
        "#d37295", reference="the Inception Score of the real images", compute=_inception_score,
        needs=("gen_score_logits",), real_reference=True),
    "fd_reference": Metric(
        "FD to the reference statistics",
        "Fréchet distance to a published reference set's statistics in this space (encoders.reference_stats, such "
        "as an ImageNet reference batch): the number papers print, comparable with theirs under the same protocol.",
        "|mu_R - mu_Y|^2 + tr S_R + tr S_Y - 2 tr sqrt(S_R^1/2 S_Y S_R^1/2), (mu_R, S_R) read from the reference "
        "statistics file, as fd",
        "#8cd17d", higher_is_better=False, compute=_fd_reference, needs=("reference_moments",)),
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
        if m.reference_in_class:
            out[f"{key}_real_in_class"] = m.reference_in_class
    return out


# ----------------------------------------------------------------------------------------------
# The README's table, from METRICS.

def markdown() -> str:
    """The metrics table of the guide (docs/metrics.md, "## Definitions"), written from METRICS: each metric's name, key,
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
