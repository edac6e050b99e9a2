"""Concept relevance: what a network sees, not only where (Concept Relevance Propagation,
Achtibat et al., Nature Machine Intelligence 2023; the numbers are those of zennit-crp 0.6).

* :func:`conditional`: heatmaps conditioned on channels of hidden nodes (an ``(n, k)`` grid of
  samples and conditions, from one forward pass per sample);
* :func:`channel_relevance`: the relevance of every channel of some nodes.

Definitions: docs/DESIGN.md, section 2.4.
"""
from .relevance import Conditional, channel_relevance, conditional

__all__ = ["Conditional", "channel_relevance", "conditional"]
