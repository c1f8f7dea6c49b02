"""Wan2.2 video generation: text, image, video and speech to video."""
__version__ = '0.1.0'
