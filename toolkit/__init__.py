"""The toolkit: compressed layers and models, physical pruning, sparse checkpoints, students, evaluation.

Built on the lab's three modules (`quantization`, `pruning`, `distillation` at the repository
root), which it imports and which never import it. One idea per module:

    layers       QuantizedLinear, quantize_model (fp16, int8, int4 group-wise, 1.58-bit, 1-bit), linear_targets
    int4         group-wise asymmetric 4-bit codes: int4_quantize, int4_dequantize
    calibration  one pass over calibration batches: per-linear-layer input statistics
    awq          activation-aware int4: scale search folded into the previous op, clipping search
    wanda        Wanda and magnitude pruning, unstructured or N:M (2:4), compact N:M checkpoints
    sensitivity  per-layer / per-kind sensitivity scan and its plot
    packing      small fields packed several to a byte
    shrink       FFN-neuron and attention-head removal, reloading
    sparse       sparse checkpoints (values + packed mask)
    students     make_student, hidden-state and attention losses, DistillationTrainer
    qat          quantization-aware training: prepare_qat (fake-quantized linears, STE), convert_qat
    evaluation   loading (with offline fallbacks), perplexity, sizes, latency, comparison, plots

Import from the modules: `from toolkit.layers import quantize_model`.
"""
