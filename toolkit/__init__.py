"""The toolkit: compressed layers and models, physical pruning, sparse checkpoints, students, evaluation.

Built on the lab's three modules (`quantization`, `pruning`, `distillation` at the repository
root), which it imports and which never import it. One idea per module, on four floors; a module
imports only from the floors below it, and the methods never import one another
(tests/test_layering.py, toolkit/README.md):

    1 plumbing     targets       which linear layers a method touches, the skip rule, submodule_at, model_device
                   calibration   one pass over calibration batches: per-linear-layer input statistics
                   blocks        calibration block by block, on cached hidden states
                   packing       small fields packed several to a byte
                   int4          group-wise asymmetric 4-bit codes: int4_quantize, int4_dequantize
    2 formats      layers        QuantizedLinear, quantize_model (fp16, int8, int4 group-wise, 1.58-bit, 1-bit)
                   sparse        sparse checkpoints (values + packed mask) and N:M checkpoints
    3 methods      awq           activation-aware int4: scale search folded into the previous op, clipping search
                   wanda         Wanda and magnitude pruning, unstructured or N:M (2:4)
                   shrink        FFN-neuron and attention-head removal, reloading
                   students      make_student, hidden-state and attention losses, DistillationTrainer
                   qat           quantization-aware training: prepare_qat (fake-quantized linears, STE), convert_qat
    4 measurement  evaluation    loading (with offline fallbacks), smoke models, perplexity, sizes, latency, comparison
                   sensitivity   per-layer / per-kind sensitivity scan and its plot

Import from the modules: `from toolkit.layers import quantize_model`.
"""
