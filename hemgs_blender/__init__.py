"""HEMGS for Blender: the extension's entry point.

This module stays thin: everything that does not need bpy lives in the `hemgs` backend package
(its numpy-only readers ship as a wheel inside the extension; rendering and the codec run in a
worker subprocess, see worker_client.py). The extension never imports torch.
"""

from . import jobs, ops, preferences, props, ui

_modules = (preferences, props, jobs, ops, ui)


def register():
    for mod in _modules:
        mod.register()


def unregister():
    from . import api

    api.shutdown()
    for mod in reversed(_modules):
        mod.unregister()
