"""The splat preview in Blender: a point-cloud object whose points carry colour, opacity and size.

Arrays come from `hemgs.preview` (numpy); here they become Blender data with float32
`foreach_set`, which is what keeps a million points within a couple of seconds.
Attributes (point domain): `hemgs_color` (FLOAT_COLOR, linear RGBA, alpha = opacity),
`hemgs_opacity` and `hemgs_size` (FLOAT). A geometry-nodes group turns them into the displayed
points (radius from `hemgs_size`) and gives them a material that reads colour and opacity.

Solid mode (Workbench) draws a point cloud in one colour per object, whatever its attributes: a
second, viewport-only modifier turns each point into a small coloured mesh (an octahedron of the
splat's radius) whose active colour attribute is `hemgs_color`, which Solid mode's "Attribute"
colour type shows. Renders (Cycles, EEVEE) keep the points.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bpy
import numpy as np

NODE_GROUP = "HEMGS Splat Preview"
SOLID_GROUP = "HEMGS Solid Colours"
SOLID_SHAPE = "HEMGS Splat Shape"
MATERIAL = "HEMGS Splat"
ATTR_COLOR, ATTR_OPACITY, ATTR_SIZE = "hemgs_color", "hemgs_opacity", "hemgs_size"


def preview_name(meta: dict) -> str:
    """The preview object's name, the one place it is made: the file's stem, and for a .hgs
    file's decoded scene "<stem> (decoded)"."""
    stem = Path(str(meta.get("path") or "preview")).stem
    return f"{stem} (decoded)" if meta.get("kind") == "decoded" else stem


def has_gaussian_splat_type() -> bool:
    """True on Blender versions whose point clouds have a Gaussian-splat type (5.3+; 5.0.1 has none)."""
    from . import native_splats

    return native_splats.splat_type() is not None


def build_preview_object(context, preview, name: str | None = None, stand_up: bool = True):
    """Link a new preview object for `preview` (a hemgs.preview.SplatPreview) into the active
    collection and return it, named `name` or `preview_name(preview.meta)`. A point cloud where
    Blender can convert a mesh to one (4.2+), else the mesh, with the node group doing the
    conversion ("Mesh to Points"). `stand_up`: rotate the object (not the data) so a y-down 3DGS
    scene stands up in Blender's z-up world. Where Blender has Gaussian splats of its own (5.3+,
    `native_splats.available()`), a point cloud that Blender draws as splats instead."""
    from . import native_splats

    name = name or preview_name(preview.meta)
    if native_splats.available():
        native = native_splats.build(context, preview, name)
        if native is not None:
            return _tag_object(native, preview, stand_up)
    n = len(preview)
    mesh = bpy.data.meshes.new(name)
    mesh.vertices.add(n)
    mesh.vertices.foreach_set("co", np.ascontiguousarray(preview.positions, np.float32).ravel())
    _set(mesh, ATTR_COLOR, "FLOAT_COLOR", "color", preview.rgba_linear())
    _make_active_color(mesh)
    _set(mesh, ATTR_OPACITY, "FLOAT", "value", preview.opacities)
    _set(mesh, ATTR_SIZE, "FLOAT", "value", preview.sizes)
    obj = bpy.data.objects.new(name, mesh)
    context.collection.objects.link(obj)
    _to_pointcloud(context, obj)
    if obj.type == "POINTCLOUD":  # the native radius too, so the points look right without the modifier
        _set(obj.data, "radius", "FLOAT", "value", preview.sizes)
    mod: Any = obj.modifiers.new("HEMGS Splats", "NODES")
    mod.node_group = ensure_node_group()
    solid: Any = obj.modifiers.new(SOLID_GROUP, "NODES")
    solid.node_group = ensure_solid_group()
    solid.show_render = False  # the viewport's Solid mode needs it; renders draw the points
    data: Any = obj.data  # a PointCloud, or the Mesh on versions that cannot convert
    data.materials.append(ensure_material())
    return _tag_object(obj, preview, stand_up)


def _tag_object(obj, preview, stand_up: bool):
    """The stand-up rotation and the hemgs_* properties, on either kind of preview object."""
    from hemgs.preview import STAND_UP_EULER

    if stand_up:
        obj.rotation_euler = STAND_UP_EULER
    for key, value in preview.meta.items():
        if isinstance(value, (str, int, float)):
            obj[f"hemgs_{key}"] = value
    obj["hemgs_count"] = len(preview)
    return obj


def _make_active_color(mesh) -> None:
    """`hemgs_color` as the mesh's active and render colour attribute (what Solid mode's
    "Attribute" colour type and the renderers' default colour read)."""
    colors: Any = mesh.color_attributes
    colors.active_color = colors[ATTR_COLOR]
    colors.render_color_index = colors.active_color_index


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


def _geometry_group(name):
    """A new geometry-nodes group with one geometry in and one out: the group, its input and
    output nodes."""
    group = bpy.data.node_groups.new(name, "GeometryNodeTree")
    group.interface.new_socket("Geometry", in_out="INPUT", socket_type="NodeSocketGeometry")
    group.interface.new_socket("Geometry", in_out="OUTPUT", socket_type="NodeSocketGeometry")
    return group, group.nodes.new("NodeGroupInput"), group.nodes.new("NodeGroupOutput")


def _named_attribute(nodes, name: str, data_type: str):
    node = nodes.new("GeometryNodeInputNamedAttribute")
    node.data_type = data_type
    node.inputs["Name"].default_value = name
    return node


def ensure_node_group():
    """The geometry-nodes group: meshes become points, point radius from `hemgs_size`, material."""
    group = bpy.data.node_groups.get(NODE_GROUP)
    if group is not None:
        return group
    group, gin, gout = _geometry_group(NODE_GROUP)
    nodes, links = group.nodes, group.links
    size = _named_attribute(nodes, ATTR_SIZE, "FLOAT")
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


def ensure_solid_shape():
    """The mesh each splat becomes in Solid mode: an octahedron of radius 1 (6 vertices, the
    fewest that look round enough), with an active `hemgs_color` attribute. Realized instances
    take their colour attribute names from it, so Solid mode's "Attribute" colour finds the
    splats' colours (stored over its white by the node group)."""
    obj = bpy.data.objects.get(SOLID_SHAPE)
    if obj is not None:
        return obj
    mesh = bpy.data.meshes.new(SOLID_SHAPE)
    verts = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    faces = [(0, 2, 4), (2, 1, 4), (1, 3, 4), (3, 0, 4), (2, 0, 5), (1, 2, 5), (3, 1, 5), (0, 3, 5)]
    mesh.from_pydata(verts, [], faces)
    mesh.color_attributes.new(ATTR_COLOR, "FLOAT_COLOR", "POINT")
    _make_active_color(mesh)
    return bpy.data.objects.new(SOLID_SHAPE, mesh)  # used by the node group only, in no scene


def ensure_solid_group():
    """Viewport-only node group: each point becomes `ensure_solid_shape()` scaled to `hemgs_size`,
    coloured by `hemgs_color` (captured before instancing, stored after realizing: the shape's own
    attribute of that name would win otherwise), with the splat material."""
    group = bpy.data.node_groups.get(SOLID_GROUP)
    if group is not None:
        return group
    group, gin, gout = _geometry_group(SOLID_GROUP)
    nodes, links = group.nodes, group.links
    points = nodes.new("GeometryNodeSeparateComponents")  # on 4.2 the mesh's own vertices ride along
    color = _named_attribute(nodes, ATTR_COLOR, "FLOAT_COLOR")
    size = _named_attribute(nodes, ATTR_SIZE, "FLOAT")
    capture = nodes.new("GeometryNodeCaptureAttribute")
    capture.domain = "POINT"
    capture.capture_items.new("RGBA", "Color")
    shape = nodes.new("GeometryNodeObjectInfo")
    shape.inputs["Object"].default_value = ensure_solid_shape()
    instance = nodes.new("GeometryNodeInstanceOnPoints")
    realize = nodes.new("GeometryNodeRealizeInstances")
    store = nodes.new("GeometryNodeStoreNamedAttribute")
    store.data_type, store.domain = "FLOAT_COLOR", "POINT"
    store.inputs["Name"].default_value = ATTR_COLOR
    material = nodes.new("GeometryNodeSetMaterial")
    material.inputs["Material"].default_value = ensure_material()
    links.new(gin.outputs[0], points.inputs["Geometry"])
    links.new(points.outputs["Point Cloud"], capture.inputs["Geometry"])
    links.new(color.outputs["Attribute"], capture.inputs["Color"])
    links.new(capture.outputs["Geometry"], instance.inputs["Points"])
    links.new(shape.outputs["Geometry"], instance.inputs["Instance"])
    links.new(size.outputs["Attribute"], instance.inputs["Scale"])
    links.new(instance.outputs["Instances"], realize.inputs["Geometry"])
    links.new(realize.outputs["Geometry"], store.inputs["Geometry"])
    links.new(capture.outputs["Color"], next(s for s in store.inputs if s.name == "Value" and s.enabled))
    links.new(store.outputs["Geometry"], material.inputs["Geometry"])
    links.new(material.outputs["Geometry"], gout.inputs[0])
    for i, node in enumerate((gin, points, capture, instance, realize, store, material, gout)):
        node.location = (200 * i, 0)
    color.location, size.location, shape.location = (200, -200), (400, -350), (400, -200)
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
