from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="vidspark",
    version="0.1.0",
    description="Distributed PySpark jobs that classify images and video frames from camera archives",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["vidspark", "vidspark.*"]),
    python_requires=">=3.10",
    install_requires=[
        "pyspark>=4.0,<5",
        "tensorflow>=2.16",
        "numpy>=1.26",
        "pandas>=2.2,<3",  # PySpark 4.x does not yet support pandas 3
        "pyarrow>=15",
        "pillow>=10.3",
        "lightgbm>=4.3",
        "scikit-learn>=1.4",
        "boto3>=1.34",
        "pyyaml>=6",
        "matplotlib>=3.8",
        "av>=12",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-timeout>=2.3", "moto[server]>=5", "duckdb>=1.0", "ruff>=0.6", "mypy>=1.10", "types-PyYAML"],
    },
    entry_points={"console_scripts": ["vidspark=vidspark.cli:entrypoint"]},
)
