"""HEMGS backend: 3DGS formats, rendering, metrics and the HEMGS codec, with its front ends: the
`hemgs` command (`cli`) and the Blender add-on's worker (`worker`), which share `service`.
The map of the modules: docs/ARCHITECTURE.md.

Importing the package itself pulls in numpy only; torch is imported by the modules that need it
(rendering, training, coding), so the readers work inside Blender's Python.
"""

__version__ = "0.1.0"
