"""dal.blender: the synthetic training-set renderer behind `dal render` (Blender Cycles, COCO).

Only modules that talk to Blender import bpy (bpy_env, meshes, materials, scene, worker); the
planning, geometry, annotation and procedural-part modules are plain numpy. See
docs/rendering.md.
"""
