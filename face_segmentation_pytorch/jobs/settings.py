"""The folder job's settings: every key of the batch command, its default and help.

The command (:mod:`face_segmentation_pytorch.cli`) parses ``KEY=VALUE`` into a
dict of these; the job (:mod:`.folder`), its engines (:mod:`.local`, the Ray
engine) and the library function :func:`~face_segmentation_pytorch.pipeline.ray_engine.segment_dataset`
read that dict. They live here, below the command, so that nothing the command
calls has to import it back.
"""

from __future__ import annotations

from ..keys import Key

__all__ = [
    "AUTO",
    "FAILURE_LOG_NAME",
    "KEYS",
    "SEGMENTER_KEYS",
    "RUN_SETTINGS_NAME",
    "OUTPUT_KEYS",
    "defaults",
]

AUTO = "auto"


FAILURE_LOG_NAME = "face_segmentation_failures.csv"


KEYS: dict[str, Key] = {
    "IMGS_DIR": Key(
        None,
        "the images (required): a folder, a text file listing image paths (one per line, "
        "relative to the file), or a glob pattern such as 'photos/**/*.jpg'",
    ),
    "MODEL_PARAMS_DIR": Key(
        None,
        "folder with the weights (face_seg_fcn8s.pt / .safetensors / .caffemodel; for LinkNet "
        "linknet_oneflow_model.pt / .safetensors or the OneFlow folder linknet_oneflow_model/); downloaded there when "
        "missing; null: $FACE_SEGMENTATION_PYTORCH_HOME, else $XDG_CACHE_HOME/face_segmentation_pytorch, "
        "else ~/.cache/face_segmentation_pytorch",
    ),
    "OUT_DIR": Key(
        None,
        "write <stem>__heatmap.png here, mirroring sub-folders; null: write "
        "<image file name>__heatmap.png next to each image",
    ),
    "DEVICE": Key(None, "cpu, cuda or cuda:N; null: cuda when available, else cpu"),
    "BATCH_SIZE": Key(1, "images per forward pass"),
    "PRECISION": Key(
        "fp32",
        "fp32 (exact: Caffe's numbers on every device; TF32 off on CUDA), tf32 (CUDA), fp16 (CUDA), "
        "bf16 (CUDA, or CPUs with native bfloat16)",
    ),
    "COMPILE": Key(False, "run the network through torch.compile (says how long it took; falls back when unavailable)"),
    "MASK_THRESHOLD": Key(None, "null: write heatmaps; a number in (0, 1): write 0/255 masks (__mask.png)"),
    "POSTPROCESS": Key(
        None,
        "steps applied to masks, comma-separated: largest, fill_holes, smooth, full "
        "(the authors' combined sequence); needs MASK_THRESHOLD",
    ),
    "DILATE": Key(
        0,
        "grow (or, negative, shrink) the mask by N pixels after POSTPROCESS, in the image's own "
        "pixels (each face on its own with cropping); needs MASK_THRESHOLD",
    ),
    "FEATHER": Key(
        0,
        "soften the mask's edge over R pixels each side (0.5 on the edge); __mask.png then holds "
        "that alpha as 8-bit grey, CUTOUT and OVERLAY use it; needs MASK_THRESHOLD",
    ),
    "HEATMAP_FORMAT": Key("png8", "png8 (__heatmap.png), png16 (__heatmap16.png) or npy (__heatmap.npy, float32)"),
    "OVERLAY": Key(False, "also write <name>__overlay.png: the image with the face blended in red"),
    "CUTOUT": Key(False, "also write <name>__cutout.png: RGBA with the face probability (or mask) as alpha"),
    "GALLERY": Key(None, "also write this picture: image, overlay and map side by side (first 16 images)"),
    "CROP": Key(
        None,
        "null: segment whole images; faces: detect faces (pip install "
        "'face_segmentation_pytorch[crop]'), segment each face crop and paste the results "
        "back; also writes <name>__faces.json with the boxes",
    ),
    "BOXES": Key(
        None,
        'your own crop boxes instead of detection: JSON {"image": [[x, y, w, h], ...]} or '
        "CSV path,x,y,w,h (paths relative to IMGS_DIR, or file names)",
    ),
    "PER_FACE": Key(False, "with CROP or BOXES and MASK_THRESHOLD: also write one mask per face (__face<k>__mask.png)"),
    "MIN_FACE_SCORE": Key(0.95, "detector confidence below which faces are ignored (CROP=faces)"),
    "BACKEND": Key(
        "torch",
        "torch; onnxruntime (CPU, fp32; pip install 'face_segmentation_pytorch[onnx]') or openvino (CPU, "
        "fp32 or bf16; pip install 'face_segmentation_pytorch[openvino]'): exports the network once "
        "to <weights file>.onnx beside the weights and runs it in that runtime",
    ),
    "INPUT_SIZE": Key(
        AUTO,
        "auto: resize to the weights' input size (500, 300, or 256 for LinkNet) like the original tools; "
        "an int: resize to that square size (LinkNet: a multiple of 32); null: run at native size "
        "(LinkNet: padded to multiples of 32)",
    ),
    "WEIGHTS": Key(
        "fcn8s_500",
        "which weights entry (its family, preprocessing and output rule): fcn8s_500, fcn8s_300_no_aug, "
        "fcn8s_500_port, linknet34_oneflow, linknet34_oneflow_demo",
    ),
    "WEIGHTS_FILE": Key(
        None,
        "run the weights in this file (.pt, .safetensors, .caffemodel, a OneFlow folder or zip; "
        "e.g. a training run's best.pt) with WEIGHTS' architecture and preprocessing, instead of "
        "looking in MODEL_PARAMS_DIR",
    ),
    "WEIGHTS_URL": Key(None, "download the weights archive from this URL instead"),
    "WEIGHTS_SHA256": Key(None, "expected sha256 of the downloaded archive"),
    "FACE_CHANNEL": Key(
        None,
        "FCN-8s only. null: face = best non-background channel (authors' demo); an int: compare that "
        "channel with background only (15 reproduces the authors' C++ tool)",
    ),
    "RECURSIVE": Key(False, "also read images in sub-folders of IMGS_DIR"),
    "OVERWRITE": Key(False, "redo images whose outputs exist (default: skip them, so runs resume)"),
    "FAILURE_LOG": Key(
        AUTO,
        f"CSV of failed images (path, stage, reason); auto: {FAILURE_LOG_NAME} in OUT_DIR "
        "(or beside the inputs), written only when something failed; null: none",
    ),
    "PIPELINE": Key(
        "auto",
        "where images are read and written while the network runs: threads (of this process), "
        "processes (worker processes: for GPUs, whose speed one process's image work cannot match), "
        "auto (processes on CUDA, threads on the CPU); outputs are the same",
    ),
    "WORKERS": Key(
        AUTO,
        "threads or worker processes that decode and write images; auto: 2 threads, or every core "
        "but two (at most 16) processes",
    ),
    "PRE_NORMALIZE": Key(False, "stretch each image to 0..255 first (the original tool does not)"),
    "MAX_IMAGE_PIXELS": Key(None, "raise Pillow's decompression-bomb limit (pixels); null: Pillow's default"),
    "PROGRESS": Key(
        True,
        "show progress on stderr: bars on a terminal, a few plain lines when stderr is a file or a pipe",
    ),
    # ENGINE=ray: the same job run by Ray Data actors (pipeline/ray_engine.py).
    "ENGINE": Key(
        "local",
        "local: this process; ray: a pool of Ray Data actors, each loading the weights once (pip install "
        "'face_segmentation_pytorch[ray]'); inputs and outputs on paths every node sees",
    ),
    "RAY_ADDRESS": Key(
        None,
        "ENGINE=ray: the running Ray cluster to use (host:port, ray://host:port or auto); null: "
        "$RAY_ADDRESS if set, else a local Ray started for this run",
    ),
    "RAY_NUM_ACTORS": Key(
        None,
        "ENGINE=ray: actors, each with its own copy of the network; null: one per GPU slot with "
        "RAY_GPUS_PER_ACTOR, else one per node",
    ),
    "RAY_GPUS_PER_ACTOR": Key(0, "ENGINE=ray: GPUs each actor asks for (0: CPU actors; 0.5: two share a GPU)"),
}


#: FaceSegmenter keyword -> command line key (besides the weights name, ``device``
#: and ``progress``): what every engine passes (``cli._run``, the Ray actors).
SEGMENTER_KEYS = {
    "params_dir": "MODEL_PARAMS_DIR",
    "weights_file": "WEIGHTS_FILE",
    "input_size": "INPUT_SIZE",
    "threshold": "MASK_THRESHOLD",
    "postprocess": "POSTPROCESS",
    "face_channel": "FACE_CHANNEL",
    "pre_normalize": "PRE_NORMALIZE",
    "crop": "CROP",
    "min_face_score": "MIN_FACE_SCORE",
    "dilate": "DILATE",
    "feather": "FEATHER",
    "precision": "PRECISION",
    "compile": "COMPILE",
    "backend": "BACKEND",
    "url": "WEIGHTS_URL",
    "sha256": "WEIGHTS_SHA256",
}


#: Kept beside a run's outputs: the settings that decided them (the rerun rule).
RUN_SETTINGS_NAME = "face_segmentation_run.json"


#: The keys whose values decide what the outputs hold. DEVICE, BATCH_SIZE, BACKEND,
#: PIPELINE, COMPILE and ENGINE are left out: they compute the same outputs.
OUTPUT_KEYS = (
    "WEIGHTS",
    "WEIGHTS_FILE",
    "INPUT_SIZE",
    "FACE_CHANNEL",
    "PRE_NORMALIZE",
    "PRECISION",
    "MASK_THRESHOLD",
    "POSTPROCESS",
    "DILATE",
    "FEATHER",
    "HEATMAP_FORMAT",
    "OVERLAY",
    "CUTOUT",
    "CROP",
    "BOXES",
    "PER_FACE",
    "MIN_FACE_SCORE",
)


def defaults() -> dict:
    """Every key with its default value (a fresh dict)."""
    return {name: key.default for name, key in KEYS.items()}
