"""Bridges to other libraries' model formats (diffusers pipeline folders)."""
