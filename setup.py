"""Only the optional C extension lives here; everything else is in setup.cfg.

tagger._resample makes the model's input faster with Pillow's exact pixels (tagger/fastjpeg.py).
Where no C compiler is found the build goes on without it, and tagger uses Pillow alone.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tagger._resample", ["tagger/_resample.c"], extra_compile_args=["-O3"], optional=True),
    ]
)
