"""Encoders and decoders that turn models into `.hgs` files and back.

- `registry`: the codecs a header may name, their format numbers, `decode` for every file, and
  the `Decoded` protocol (header, Gaussians, renderer);
- `legacy`: older headers read as the current format;
- `layout`: what the codecs share (rows per call, header and section checks, the part layout);
- `anchor` (codec "hac") and `hemgs_codec` (codec "hemgs"): anchor models with HAC's or HEMGS's
  entropy model; direct mode's codec is `hemgs.direct.codec`;
- `streams`: one coded stream; `weights`: network weights in files.
The container (hemgs.container) and the entropy-coding primitives (hemgs.coding) are shared.
"""
