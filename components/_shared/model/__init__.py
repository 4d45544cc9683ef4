"""The model every step shares: its files, its inputs, the network (torch), and serving (onnxruntime).

Split so that a step imports only what it needs: ``files`` and ``inputs`` are numpy-only,
``serving`` runs the exported ONNX file without torch, ``network`` is the PyTorch side.
"""
