"""The files of a trained model: what train writes, the registry publishes and KServe serves."""

WEIGHTS_FILE = "model.safetensors"
ONNX_FILE = "model.onnx"  # input 'input' (N, C, H, W) float 0..1, output 'logits'
META_FILE = "meta.json"  # architecture, image shape, classes, training record
REFERENCE_FILE = "reference.npy"  # pooled-pixel features of a sample of the training images
EMBEDDING_FILE = "reference_embedding.npy"  # the model's embeddings of held-out images
MODEL_FILES = (WEIGHTS_FILE, ONNX_FILE, META_FILE, REFERENCE_FILE, EMBEDDING_FILE)
