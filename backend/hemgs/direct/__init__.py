"""Anchor-free mode: the HEMGS entropy model applied directly to a scene's own Gaussians.

- `attributes`: the coded stages (opacity, scale, rotation, position residual, DC, SH) and their
  render weights;
- `geometry`: voxels + counts + residuals, the coding order;
- `model`: DirectEntropyModel (hyperprior, AR context, variable-rate steps per stage);
- `prepare`: what encoder and decoder derive from the voxels alone;
- `fit`: fitting the model in attribute space (importance per view, the skip decision's best view);
- `stages`: the stage loop both sides share (parameters per group), the encoder's and the
  decoder's passes, the encoder's RD rounding and SH repeat choices;
- `repeats`: SH rows that repeat an earlier-coded Gaussian's;
- `balance`: the encoder's per-file stage balance from renders;
- `codec`: .hgs sections and headers, exactly decodable (`encode`, `decode`).
"""

from .codec import DecodedDirect, decode, encode
from .fit import DirectFitConfig, DirectFitted, fit_direct
from .model import LAMBDAS, DirectConfig

__all__ = ["DecodedDirect", "DirectConfig", "DirectFitConfig", "DirectFitted", "LAMBDAS", "decode", "encode",
           "fit_direct"]
