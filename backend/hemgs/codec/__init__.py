"""Encoders and decoders that turn trained models into `.hgs` files and back.

`anchor.py` codes an anchor model (Scaffold-GS/HAC structure) with an entropy model; the
container (hemgs.container) and the entropy-coding primitives (hemgs.coding) are shared.
"""
