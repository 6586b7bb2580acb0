"""Blender's own Gaussian splats (Blender 5.3 and later): the preview as a point cloud that Blender
itself draws as 3D Gaussians, with no node groups or material.

What Blender 5.3 expects, read from its own source (its PLY and SPZ importers and the draw code
that uploads the splats; docs/blender.md lists the files): a point cloud data-block whose type is
"3D Gaussian Splats", with point attributes
- `position` (FLOAT_VECTOR): the centres;
- `scale` (FLOAT_VECTOR): the three standard deviations, *activated* (exp of the 3DGS log-scales);
- `rotation` (QUATERNION): the orientation, w, x, y, z (the 3DGS PLY's rot_0..3 order);
- `radiance:base` (a float4): x, y, z the DC spherical-harmonic coefficients as 3DGS files store
  them (f_dc_0..2: colour = 0.5 + SH_C0 * f_dc), w the *activated* opacity (sigmoid, 0..1);
- `radiance:sh_<k>` (FLOAT_VECTOR), k = 0, 1, ...: SH coefficient k+1 (the first after DC) in
  R, G, B; Blender draws up to k = 14 (SH degree 3).
The object transform is applied to the splats, as Blender's PLY importer applies its own axis
conversion: the data keep the file's coordinates, and the stand-up rotation stays on the object.

Feature detection only (`available()`), never a version number. The one name the running
Blender is asked for rather than told: the point cloud's type property and its splat item, found
by looking through `bpy.types.PointCloud`'s enum properties for an item that names Gaussian
splats (docs/blender.md: that identifier could not be read in Blender's own source).

No torch, and numpy only (Blender ships it). The mapping (`attributes_from_preview`) is pure, so
it is tested without Blender.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MAX_SH_REST = 15  # Blender's splat drawing reads radiance:sh_0 .. radiance:sh_14 (degree 3)

ATTR_POSITION, ATTR_SCALE, ATTR_ROTATION = "position", "scale", "rotation"
ATTR_BASE, SH_PREFIX = "radiance:base", "radiance:sh_"
# The attribute types used. FLOAT4 (radiance:base) is not in Blender 5.0.1, and its Python name
# is the one piece not read in Blender's own source (docs/blender.md); available() asks for it.
FLOAT3, QUATERNION, FLOAT4 = "FLOAT_VECTOR", "QUATERNION", "FLOAT4"
# The property an attribute value carries its numbers in (vector, quaternion `value`, colour):
# read from the running Blender, this is only the order they are tried in.
_VALUE_KEYS = ("vector", "value", "color")


def _bpy(bpy: Any = None) -> Any:
    if bpy is not None:
        return bpy
    import bpy as real

    return real


def splat_type(bpy: Any = None) -> tuple[str, str] | None:
    """(property, item) that makes a point cloud data-block a Gaussian-splat cloud in the running
    Blender, e.g. the value of `PointCloud.<property>` whose UI name is "3D Gaussian Splats";
    None where point clouds have no such type (Blender up to 5.2)."""
    bpy = _bpy(bpy)
    cls = getattr(bpy.types, "PointCloud", None)
    if cls is None:
        return None
    for prop in cls.bl_rna.properties:
        if prop.type != "ENUM" or prop.is_readonly:
            continue
        for item in prop.enum_items:
            words = f"{item.identifier} {item.name}".lower()
            if "splat" in words or "gauss" in words:
                return prop.identifier, item.identifier
    return None


def available(bpy: Any = None) -> bool:
    """True when the running Blender can hold the preview as its own Gaussian splats: point
    clouds with a splat type, `PointCloud.resize`, and the attribute types the splats use."""
    try:
        bpy = _bpy(bpy)
        if splat_type(bpy) is None or not hasattr(bpy.data, "pointclouds"):
            return False
        if bpy.types.PointCloud.bl_rna.functions.get("resize") is None:
            return False
        types = {i.identifier for i in bpy.types.Attribute.bl_rna.properties["data_type"].enum_items}
        return {FLOAT3, QUATERNION, FLOAT4} <= types
    except (AttributeError, KeyError, TypeError, ImportError):
        return False


def attributes_from_preview(preview) -> dict[str, tuple[str, np.ndarray]]:
    """The point attributes of Blender's splat cloud for `preview` (a hemgs.preview.SplatPreview):
    name -> (attribute type, (N, components) float32), `position` first.

    A SplatPreview carries a colour, an opacity and one display size per splat, so by default
    each splat becomes a round Gaussian (the three scales its size / SIZE_SIGMAS, no rotation)
    whose DC term gives back its colour (exact unless the file's colour was outside 0..1, which
    the preview clips). Where the preview also carries the scene's own `log_scales` (N,3),
    `quats` (N,4, w x y z) and `sh` (N,K,3, DC first, as hemgs.scene.GaussianScene) — a 3DGS
    scene's preview does — those are used instead, higher SH included."""
    from hemgs.preview import MAX_LOG_SCALE, SIZE_SIGMAS
    from hemgs.scene import SH_C0

    n = len(preview)
    positions = np.ascontiguousarray(preview.positions, np.float32).reshape(n, 3)
    log_scales = getattr(preview, "log_scales", None)
    quats = getattr(preview, "quats", None)
    sh = getattr(preview, "sh", None)

    if log_scales is not None:
        scale = np.exp(np.minimum(np.asarray(log_scales, np.float32).reshape(n, 3), np.float32(MAX_LOG_SCALE)))
    else:
        sigma = np.asarray(preview.sizes, np.float32).reshape(n) / np.float32(SIZE_SIGMAS)
        scale = np.repeat(sigma[:, None], 3, axis=1)

    if quats is not None:
        rot = np.asarray(quats, np.float64).reshape(n, 4)
        norm = np.linalg.norm(rot, axis=1, keepdims=True)
        rot = np.where(norm > 0, rot / np.where(norm > 0, norm, 1.0), [1.0, 0.0, 0.0, 0.0])
    else:
        rot = np.tile(np.array([1.0, 0.0, 0.0, 0.0]), (n, 1))

    if sh is not None:
        sh = np.asarray(sh, np.float32).reshape(n, -1, 3)
        dc = sh[:, 0, :]
    else:
        dc = (np.asarray(preview.colors, np.float32).reshape(n, 3) - np.float32(0.5)) / np.float32(SH_C0)
    base = np.concatenate([dc, np.asarray(preview.opacities, np.float32).reshape(n, 1)], axis=1)

    out = {ATTR_POSITION: (FLOAT3, positions), ATTR_SCALE: (FLOAT3, scale),
           ATTR_ROTATION: (QUATERNION, rot), ATTR_BASE: (FLOAT4, base)}
    if sh is not None:
        for k in range(min(sh.shape[1] - 1, MAX_SH_REST)):
            out[f"{SH_PREFIX}{k}"] = (FLOAT3, sh[:, k + 1, :])
    return {name: (kind, np.ascontiguousarray(values, np.float32)) for name, (kind, values) in out.items()}


def _value_key(attr) -> str:
    """The property of `attr`'s values that foreach_set fills, as the running Blender names it."""
    props = attr.data[0].bl_rna.properties
    for key in _VALUE_KEYS:
        if props.get(key) is not None:
            return key
    raise KeyError(f"{attr.data_type} attribute values have none of {', '.join(_VALUE_KEYS)}")


def write_attribute(data, name: str, kind: str, values: np.ndarray) -> None:
    """Point attribute `name` of type `kind` on `data`, made or replaced, filled with `values`."""
    attr = data.attributes.get(name)
    if attr is not None and attr.data_type != kind:
        data.attributes.remove(attr)
        attr = None
    if attr is None:
        attr = data.attributes.new(name, kind, "POINT")
    if len(values):
        attr.data.foreach_set(_value_key(attr), np.ascontiguousarray(values, np.float32).ravel())


def make_object(context, preview, name: str, bpy: Any = None):
    """A new object whose data is a Gaussian-splat point cloud of `preview`, linked into the
    active collection. Only where `available()`."""
    bpy = _bpy(bpy)
    found = splat_type(bpy)
    if found is None:
        raise RuntimeError("this Blender's point clouds have no Gaussian-splat type")
    prop, item = found
    n = len(preview)
    cloud: Any = bpy.data.pointclouds.new(name)
    try:
        if n:
            cloud.resize(n)
        for attr_name, (kind, values) in attributes_from_preview(preview).items():
            write_attribute(cloud, attr_name, kind, values)
        setattr(cloud, prop, item)  # once the splats are complete
        cloud.update_tag()
    except Exception:
        bpy.data.pointclouds.remove(cloud)
        raise
    obj = bpy.data.objects.new(name, cloud)
    context.collection.objects.link(obj)
    return obj


def build(context, preview, name: str, bpy: Any = None):
    """`make_object`, or None where it fails (it leaves nothing behind; the reason goes to the
    console): the caller then builds the preview of Blender 4.2-5.2, so that an API this module
    could not try on a real Blender 5.3 never costs the user their preview."""
    try:
        return make_object(context, preview, name, bpy=bpy)
    except Exception as exc:  # noqa: BLE001 - any failure of the new path falls back to the old
        print(f"HEMGS: Blender's own Gaussian splats failed ({type(exc).__name__}: {exc}); "
              "showing the point preview instead")
        return None
