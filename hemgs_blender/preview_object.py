"""The splat preview in Blender: a point-cloud object whose points carry colour, opacity and size.

Arrays come from `hemgs.preview` (numpy); here they become Blender data with float32
`foreach_set`, which is what keeps a million points within a couple of seconds.
Attributes (point domain): `hemgs_color` (FLOAT_COLOR, linear RGBA, alpha = opacity),
`hemgs_opacity` and `hemgs_size` (FLOAT). A geometry-nodes group turns them into the displayed
points (radius from `hemgs_size`) and gives them a material that reads colour and opacity.
"""

from __future__ import annotations

from typing import Any

import bpy
import numpy as np

NODE_GROUP = "HEMGS Splat Preview"
MATERIAL = "HEMGS Splat"
ATTR_COLOR, ATTR_OPACITY, ATTR_SIZE = "hemgs_color", "hemgs_opacity", "hemgs_size"


def has_gaussian_splat_type() -> bool:
    """True on Blender versions whose point clouds have a GAUSSIAN_SPLAT type (5.0.1 has none)."""
    prop = bpy.types.PointCloud.bl_rna.properties.get("type")
    return prop is not None and "GAUSSIAN_SPLAT" in {i.identifier for i in getattr(prop, "enum_items", [])}


def build_preview_object(context, preview, name: str):
    """Link a new preview object for `preview` (a hemgs.preview.SplatPreview) into the active
    collection and return it. A point cloud where Blender can convert a mesh to one (4.2+), else
    the mesh, with the node group doing the conversion ("Mesh to Points")."""
    n = len(preview)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(n)
    mesh.vertices.foreach_set("co", np.ascontiguousarray(preview.positions, np.float32).ravel())
    _set(mesh, ATTR_COLOR, "FLOAT_COLOR", "color", preview.rgba_linear())
    _set(mesh, ATTR_OPACITY, "FLOAT", "value", preview.opacities)
    _set(mesh, ATTR_SIZE, "FLOAT", "value", preview.sizes)
    obj = bpy.data.objects.new(name, mesh)
    context.collection.objects.link(obj)
    _to_pointcloud(context, obj)
    if obj.type == "POINTCLOUD":  # the native radius too, so the points look right without the modifier
        _set(obj.data, "radius", "FLOAT", "value", preview.sizes)
    mod: Any = obj.modifiers.new("HEMGS Splats", "NODES")
    mod.node_group = ensure_node_group()
    data: Any = obj.data  # a PointCloud, or the Mesh on versions that cannot convert
    data.materials.append(ensure_material())
    for key, value in preview.meta.items():
        if isinstance(value, (str, int, float)):
            obj[f"hemgs_{key}"] = value
    obj["hemgs_count"] = n
    return obj


def _set(data, name: str, kind: str, field: str, values) -> None:
    attr = data.attributes.get(name) or data.attributes.new(name, kind, "POINT")
    attr.data.foreach_set(field, np.ascontiguousarray(values, np.float32).ravel())


def _to_pointcloud(context, obj) -> None:
    # Blender 4.2 cannot convert a mesh to a point cloud (its stubs list no POINTCLOUD target):
    # ask the running Blender instead of going by version numbers.
    convert: Any = bpy.ops.object.convert
    targets = {i.identifier for i in convert.get_rna_type().properties["target"].enum_items}
    if "POINTCLOUD" not in targets:
        return
    view_layer = context.view_layer
    with context.temp_override(active_object=obj, object=obj, selected_objects=[obj],
                               selected_editable_objects=[obj]):
        convert(target="POINTCLOUD")
    # convert() works on the selection: keep ours and nothing else selected, and drop the
    # mesh-only selection attribute it carries over.
    view_layer.objects.active = obj
    if obj.type == "POINTCLOUD":
        data: Any = obj.data
        sel = data.attributes.get(".select_vert")
        if sel is not None:
            data.attributes.remove(sel)


def ensure_node_group():
    """The geometry-nodes group: meshes become points, point radius from `hemgs_size`, material."""
    group = bpy.data.node_groups.get(NODE_GROUP)
    if group is not None:
        return group
    group = bpy.data.node_groups.new(NODE_GROUP, "GeometryNodeTree")
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    nodes, links = group.nodes, group.links
    gin, gout = nodes.new("NodeGroupInput"), nodes.new("NodeGroupOutput")
    size = nodes.new("GeometryNodeInputNamedAttribute")
    size.data_type = "FLOAT"
    size.inputs["Name"].default_value = ATTR_SIZE
    to_points = nodes.new("GeometryNodeMeshToPoints")  # the 4.2 path: a mesh preview
    join = nodes.new("GeometryNodeJoinGeometry")  # point clouds pass by Mesh to Points untouched
    radius = nodes.new("GeometryNodeSetPointRadius")
    material = nodes.new("GeometryNodeSetMaterial")
    material.inputs["Material"].default_value = ensure_material()
    links.new(gin.outputs[0], to_points.inputs["Mesh"])
    links.new(size.outputs["Attribute"], to_points.inputs["Radius"])
    links.new(to_points.outputs["Points"], join.inputs["Geometry"])
    links.new(gin.outputs[0], join.inputs["Geometry"])
    links.new(join.outputs["Geometry"], radius.inputs["Points"])
    links.new(size.outputs["Attribute"], radius.inputs["Radius"])
    links.new(radius.outputs["Points"], material.inputs["Geometry"])
    links.new(material.outputs["Geometry"], gout.inputs[0])
    for i, node in enumerate((gin, size, to_points, join, radius, material, gout)):
        node.location = (200 * i, 0)
    return group


def ensure_material():
    """Emission coloured by `hemgs_color`, mixed with transparency by `hemgs_opacity`."""
    mat = bpy.data.materials.get(MATERIAL)
    if mat is not None:
        return mat
    mat = bpy.data.materials.new(MATERIAL)
    mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    color = nodes.new("ShaderNodeAttribute")
    color.attribute_type = "GEOMETRY"
    color.attribute_name = ATTR_COLOR
    opacity = nodes.new("ShaderNodeAttribute")
    opacity.attribute_type = "GEOMETRY"
    opacity.attribute_name = ATTR_OPACITY
    emission = nodes.new("ShaderNodeEmission")
    transparent = nodes.new("ShaderNodeBsdfTransparent")
    mix = nodes.new("ShaderNodeMixShader")
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(color.outputs["Color"], emission.inputs["Color"])
    links.new(opacity.outputs["Fac"], mix.inputs["Fac"])
    links.new(transparent.outputs["BSDF"], mix.inputs[1])
    links.new(emission.outputs["Emission"], mix.inputs[2])
    links.new(mix.outputs["Shader"], out.inputs["Surface"])
    mat.diffuse_color = (0.8, 0.8, 0.8, 1.0)
    for i, node in enumerate((color, emission, mix, out)):
        node.location = (250 * i, 0)
    opacity.location, transparent.location = (250, 250), (250, -200)
    return mat
