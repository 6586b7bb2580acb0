"""Anchor-free mode: the HEMGS entropy model applied directly to a scene's own Gaussians.

- `attributes`: the coded stages (opacity, scale, rotation, position residual, DC, SH) and their
  render weights;
- `geometry`: voxels + counts + residuals, the coding order;
- `model`: DirectEntropyModel (hyperprior, AR context, variable-rate steps per stage);
- `prepare`: what encoder and decoder derive from the voxels alone;
- `fit`: fitting the model in attribute space;
- `codec`: .hgs sections, exactly decodable.
"""

from .codec import DecodedDirect, decode, encode
from .fit import DirectFitConfig, DirectFitted, fit_direct
from .model import LAMBDAS, DirectConfig

__all__ = ["DecodedDirect", "DirectConfig", "DirectFitConfig", "DirectFitted", "LAMBDAS", "decode", "encode",
           "fit_direct"]
