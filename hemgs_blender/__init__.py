"""HEMGS for Blender: the extension's entry point.

This module stays thin: everything that does not need bpy lives in the `hemgs` backend package,
which the extension drives through a worker subprocess (it never imports torch here).
"""

from . import preferences, ui

_modules = (preferences, ui)


def register():
    for mod in _modules:
        mod.register()


def unregister():
    for mod in reversed(_modules):
        mod.unregister()
