"""Entropy-coding substrate of the codecs, anchor and direct mode (needs constriction; torch only
in run_deterministic).

- `gaussian_coder`: integer symbols under per-element quantized Gaussians (or Laplacians), with escapes;
- `uniform`: integers uniform over per-element ranges;
- `exact_params`: deterministic network evaluation, snapped parameters, boundary guard, CRCs;
- `exact_math`: log1p, expm1, sin, cos from IEEE basic operations (the same bits on every CPU);
- `steps`: quantization steps snapped to exact values;
- `locations`: lossless occupancy-octree coding of voxel coordinates;
- `bits`: binary arrays and varints.
"""

from .bits import decode_bits, encode_bits
from .exact_params import (SnappedParams, apply_guard, check_param_checksums, encode_guard, param_checksums,
                           run_deterministic, snap_for_encoder, snap_params)
from .gaussian_coder import decode_symbols, encode_symbols, estimate_bits
from .locations import decode_locations, encode_locations

__all__ = [
    "SnappedParams", "apply_guard", "check_param_checksums", "decode_bits", "decode_locations", "decode_symbols",
    "encode_bits", "encode_guard", "encode_locations", "encode_symbols", "estimate_bits", "param_checksums",
    "run_deterministic", "snap_for_encoder", "snap_params",
]
