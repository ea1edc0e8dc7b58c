"""ONNX: a checkpoint -> a self-describing ``.onnx`` model (fp32 or int8), and reading one back.

``export``       the PyTorch graph -> ONNX (``export_onnx``, ``export_module``), checked against
                 PyTorch in ONNX Runtime (``verify_onnx``)
``metadata``     what makes the file self-describing (``build_metadata``, ``read_onnx_info`` ->
                 ``OnnxModelInfo``)
``digest``       ``sfnet.digest``: stamped on every model written, checked on every read
``quantize``     int8 static quantisation calibrated on frames (``quantize_int8``, ``export_int8``)
``calibration``  where calibration frames come from (image folder, image, bag via the ROS layer)

Sessions that run a model live in ``sfnet_core.inference.backends``; the export cache of a ``.pt``
run in ONNX Runtime in ``sfnet_core.inference.cache``. This package sits below inference and never
imports it. Nothing is imported here, so ``sfnet_core.onnx.calibration`` loads without torch.
(``import onnx`` inside this package is the third-party ``onnx``: imports are absolute. It takes
about a second, so these modules import it where they use it: the inference backends import
``metadata`` for its types alone.)
"""
