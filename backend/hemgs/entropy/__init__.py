"""Entropy models: the scene-specific hash-grid hyperprior (HAC level) and, on top of it, HEMGS.

Each stage is one small torch module with the same verbs: `forward` gives training-time quantized
values and their estimated bits; the codec (hemgs.codec) asks it for distribution parameters and
runs them through the exact parameter path before entropy coding.
"""
