"""Blender materials from MaterialPlans: plain, brushed-metal, procedural noise, image texture.

Materials are assigned per object (slot link 'OBJECT'), so several instances of one library
mesh can look different without touching the shared mesh. Textures use box projection on the
object's generated coordinates, so meshes without UV maps texture as well as those with.
"""

from __future__ import annotations

from typing import Any

from dal.blender.sampling import MaterialPlan
from dal.errors import DatasetError


def _socket(sockets: Any, identifier: str) -> Any:
    """A socket by identifier: the Mix node has several inputs named "A" (one per data type)."""
    for socket in sockets:
        if socket.identifier == identifier:
            return socket
    raise KeyError(identifier)


class MaterialFactory:
    """Builds materials for one image and removes them before the next one."""

    def __init__(self, bpy: Any) -> None:
        self.bpy = bpy
        self._made: list[Any] = []
        self._images: dict[str, Any] = {}

    def clear(self) -> None:
        for mat in self._made:
            self.bpy.data.materials.remove(mat, do_unlink=True)
        self._made.clear()

    def assign(self, obj: Any, plan: MaterialPlan) -> None:
        """Give every slot of `obj` the planned material ('original' keeps the mesh's own)."""
        if plan.kind == "original":
            return
        mat = self.build(plan)
        for slot in obj.material_slots:
            slot.link = "OBJECT"
            slot.material = mat

    def build(self, plan: MaterialPlan) -> Any:
        mat = self.bpy.data.materials.new(f"dal_{plan.kind}")
        self._made.append(mat)
        tree = mat.node_tree
        bsdf = tree.nodes["Principled BSDF"]
        bsdf.inputs["Base Color"].default_value = (*plan.color, 1.0)
        bsdf.inputs["Metallic"].default_value = plan.metallic
        bsdf.inputs["Roughness"].default_value = plan.roughness
        if plan.kind == "metal":
            self._metal(tree, bsdf, plan)
        elif plan.kind == "procedural":
            self._procedural(tree, bsdf, plan)
        elif plan.kind == "texture":
            self._texture(tree, bsdf, plan)
        return mat

    def _noise(self, tree: Any, scale: float, stretch: float = 1.0) -> Any:
        coords = tree.nodes.new("ShaderNodeTexCoord")
        mapping = tree.nodes.new("ShaderNodeMapping")
        mapping.inputs["Scale"].default_value = (1.0, 1.0, stretch)
        noise = tree.nodes.new("ShaderNodeTexNoise")
        noise.inputs["Scale"].default_value = scale
        noise.inputs["Detail"].default_value = 6.0
        tree.links.new(coords.outputs["Object"], mapping.inputs["Vector"])
        tree.links.new(mapping.outputs["Vector"], noise.inputs["Vector"])
        return noise

    def _metal(self, tree: Any, bsdf: Any, plan: MaterialPlan) -> None:
        """Brushed look: noise stretched along one axis varies roughness and brightness a bit."""
        noise = self._noise(tree, plan.pattern_scale, stretch=0.05)
        rough = tree.nodes.new("ShaderNodeMapRange")
        rough.inputs["To Min"].default_value = max(0.02, plan.roughness - 0.12)
        rough.inputs["To Max"].default_value = min(1.0, plan.roughness + 0.12)
        tree.links.new(noise.outputs["Factor"], rough.inputs["Value"])
        tree.links.new(rough.outputs["Result"], bsdf.inputs["Roughness"])
        tint = tree.nodes.new("ShaderNodeMix")
        tint.data_type = "RGBA"
        darker = tuple(0.8 * c for c in plan.color)
        lighter = tuple(min(1.0, 1.15 * c) for c in plan.color)
        _socket(tint.inputs, "A_Color").default_value = (*darker, 1.0)
        _socket(tint.inputs, "B_Color").default_value = (*lighter, 1.0)
        tree.links.new(noise.outputs["Factor"], _socket(tint.inputs, "Factor_Float"))
        tree.links.new(_socket(tint.outputs, "Result_Color"), bsdf.inputs["Base Color"])

    def _procedural(self, tree: Any, bsdf: Any, plan: MaterialPlan) -> None:
        noise = self._noise(tree, plan.pattern_scale)
        mix = tree.nodes.new("ShaderNodeMix")
        mix.data_type = "RGBA"
        _socket(mix.inputs, "A_Color").default_value = (*plan.color, 1.0)
        _socket(mix.inputs, "B_Color").default_value = (*plan.color2, 1.0)
        tree.links.new(noise.outputs["Factor"], _socket(mix.inputs, "Factor_Float"))
        tree.links.new(_socket(mix.outputs, "Result_Color"), bsdf.inputs["Base Color"])

    def _texture(self, tree: Any, bsdf: Any, plan: MaterialPlan) -> None:
        coords = tree.nodes.new("ShaderNodeTexCoord")
        mapping = tree.nodes.new("ShaderNodeMapping")
        mapping.inputs["Scale"].default_value = (plan.pattern_scale,) * 3
        tex = tree.nodes.new("ShaderNodeTexImage")
        tex.image = self._image(plan.texture or "")
        tex.projection = "BOX"
        tex.projection_blend = 0.2
        tree.links.new(coords.outputs["Generated"], mapping.inputs["Vector"])
        tree.links.new(mapping.outputs["Vector"], tex.inputs["Vector"])
        gain = tree.nodes.new("ShaderNodeMix")
        gain.data_type = "RGBA"
        gain.blend_type = "MULTIPLY"
        _socket(gain.inputs, "Factor_Float").default_value = 1.0
        brightness = sum(plan.color) / 1.5  # plan.color is mid grey times the brightness jitter
        _socket(gain.inputs, "B_Color").default_value = (brightness, brightness, brightness, 1.0)
        tree.links.new(tex.outputs["Color"], _socket(gain.inputs, "A_Color"))
        tree.links.new(_socket(gain.outputs, "Result_Color"), bsdf.inputs["Base Color"])

    def _image(self, path: str) -> Any:
        if path not in self._images:
            try:
                self._images[path] = self.bpy.data.images.load(path, check_existing=True)
            except RuntimeError as err:
                raise DatasetError(
                    f"texture image {path} cannot be read: {err}",
                    hint="remove or replace the file in the texture folder",
                ) from None
        return self._images[path]
