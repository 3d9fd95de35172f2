"""blender."""
