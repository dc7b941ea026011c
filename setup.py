"""Build the optional native Gram kernel (src/rankdecay/_gram.c); the rest is in pyproject.toml.

``optional=True``: where no C compiler is at hand the install still succeeds and rankdecay uses
its BLAS for the Grams (same results to rounding, slower; ``rankdecay.spectra.gram_kernel()``).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "rankdecay._gram",
            ["src/rankdecay/_gram.c"],
            extra_compile_args=["-O3", "-std=gnu11"],
            optional=True,
        )
    ]
)
