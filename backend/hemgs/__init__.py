"""HEMGS backend: 3DGS formats, rendering, metrics and the HEMGS codec.

Importing the package itself pulls in numpy only; torch is imported by the modules that need it
(rendering, training, coding), so the readers work inside Blender's Python.
"""

__version__ = "0.1.0"
