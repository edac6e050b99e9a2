"""Concept relevance: what a network sees, not only where (Concept Relevance Propagation,
Achtibat et al., Nature Machine Intelligence 2023; the numbers are those of zennit-crp 0.6).

* :func:`conditional`: heatmaps conditioned on channels of hidden nodes (an ``(n, k)`` grid of
  samples and conditions, from one forward pass per sample);
* :func:`channel_relevance`: the relevance of every channel of some nodes;
* :func:`atlas`: per channel, the samples of a dataset in which it is most relevant and most
  active (relevance and activation maximization), as an :class:`Atlas`;
* :func:`references`: a channel's heatmaps on its reference samples, from its most relevant
  neuron (its receptive field), with their crops;
* :func:`attribution_graph`: how one concept's relevance splits over the concepts below it.

Definitions: docs/DESIGN.md, section 2.4.
"""
from .decomposition import AttributionGraph, attribution_graph
from .maximization import Atlas, atlas
from .references import References, crop_box, references
from .relevance import Conditional, channel_relevance, conditional

__all__ = ["Atlas", "AttributionGraph", "Conditional", "References", "atlas",
           "attribution_graph", "channel_relevance", "conditional", "crop_box", "references"]
