"""Only the optional C extension lives here; everything else is in setup.cfg.

tagger.engine._resample makes the model's input faster with Pillow's exact pixels (tagger/engine/fastjpeg.py).
Where no C compiler is found the build goes on without it, and tagger uses Pillow alone.
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("tagger.engine._resample", ["tagger/engine/_resample.c"], extra_compile_args=["-O3"], optional=True),
    ]
)
