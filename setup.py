"""Build hook for the one compiled module; everything else is declared in setup.cfg."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # Pillow-exact LANCZOS resampling for batched perceptual hashes. Optional: without a C compiler the
        # install still succeeds and hashing falls back to the pure numpy path (same bits, slower).
        Extension("medscale.hashing._lanczos", ["medscale/hashing/_lanczos.c"],
                  depends=["medscale/hashing/_lanczos_kernel.h", "medscale/hashing/_lanczos_transpose.h"],
                  extra_compile_args=["-O3"], optional=True),
    ],
)
