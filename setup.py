"""The one thing pyproject.toml cannot say: the optional C extension for block hashing.

`gateway._chainhash` needs a C compiler and xxhash.h (Debian's `libxxhash-dev`) at build time only.
Where either is missing the build goes on without it and the gateway hashes in Python (slower, same
hashes); `kvgate serve` logs which one it uses.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("gateway._chainhash", ["gateway/_chainhash.c"], optional=True, extra_compile_args=["-O3"])
    ]
)
