"""Add-on preferences: which Python runs the `hemgs` backend worker."""

import bpy


class HEMGS_AddonPreferences(bpy.types.AddonPreferences):
    # Extensions load as bl_ext.<repo>.<id>; __package__ is that full name.
    bl_idname = __package__

    backend_python: bpy.props.StringProperty(
        name="Backend Python",
        description="Python interpreter that has the hemgs backend installed (torch, gsplat)",
        subtype="FILE_PATH",
        default="",
    )

    def draw(self, context):
        self.layout.prop(self, "backend_python")


def get(context):
    return context.preferences.addons[__package__].preferences


def register():
    bpy.utils.register_class(HEMGS_AddonPreferences)


def unregister():
    bpy.utils.unregister_class(HEMGS_AddonPreferences)
