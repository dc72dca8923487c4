"""From a distilled run to a deployable student (docs/deploy.md).

One job per module:

- `load`: the plain `nn.Module` of a kdlab checkpoint or run directory (`kdlab.load_model`), with the input
  it takes (`model.kdlab_input`: size, channels, mean/std, the resolution of a cross-quality student).
- `extras`: the optional `deploy` extra (onnx, onnxruntime), imported on first use with a one-line error.
- `samples`: the images an export or a quantization is checked and calibrated on (the run's data, or random).
- `runtimes`: run an exported file (ONNX Runtime, TorchScript, torch.export) as a function of a batch.
- `export`: `kdlab export` (ONNX, TorchScript, PT2) and the preprocessing JSON written beside the file.
- `verify`: the check that refuses an export whose logits differ from PyTorch's beyond a stated tolerance.
- `quantize`: `kdlab quantize`, int8 static post-training quantization with ONNX Runtime.
- `latency`: latency measured as a benchmark (warm-up, repeats, median and spread); benchmarks/ use it too.
- `profile`: `kdlab profile`, the table of teachers and students (parameters, MACs, sizes, latency, top-1, ECE).
- `pareto`: the top-1 against latency plot with the Pareto front.
"""
