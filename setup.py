"""Builds the C++ Countdown verifier/solver (fastzero._countdown) with pybind11; the rest is in pyproject.toml."""
from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import find_packages, setup

packages = ["fastzero." + p for p in find_packages("fastzero")] + ["fastzero"]
packages += ["fastzero.kernels." + p for p in find_packages("kernels")] + ["fastzero.kernels"]

ext = Pybind11Extension(
    "fastzero._countdown",
    sources=["csrc/countdown.cpp", "csrc/bindings.cpp"],
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=["-O3"],
)

setup(packages=packages, ext_modules=[ext], cmdclass={"build_ext": build_ext})
