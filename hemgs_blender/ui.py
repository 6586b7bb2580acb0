"""The "HEMGS" tab of the 3D view's sidebar."""

import bpy

from . import preferences


class HEMGS_PT_main(bpy.types.Panel):
    bl_label = "HEMGS"
    bl_idname = "HEMGS_PT_main"
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "HEMGS"

    def draw(self, context):
        layout = self.layout
        python = preferences.get(context).backend_python
        if python:
            layout.label(text=f"Backend: {bpy.path.basename(python)}", icon="CHECKMARK")
        else:
            layout.label(text="Set the backend Python in the preferences", icon="INFO")


def register():
    bpy.utils.register_class(HEMGS_PT_main)


def unregister():
    bpy.utils.unregister_class(HEMGS_PT_main)
