"""Entropy-coding substrate of the anchor codec (needs constriction; torch only in run_deterministic).

- `gaussian_coder`: integer symbols under per-element quantized Gaussians, with escapes;
- `exact_params`: deterministic network evaluation, snapped parameters, boundary guard, CRCs;
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
