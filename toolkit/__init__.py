"""The toolkit: compressed layers and models, physical pruning, sparse checkpoints, students, evaluation.

Built on the lab's three modules (`quantization`, `pruning`, `distillation` at the repository
root), which it imports and which never import it. One idea per module:

    layers       QuantizedLinear, quantize_model
    packing      small fields packed several to a byte
    shrink       FFN-neuron and attention-head removal, reloading
    sparse       sparse checkpoints (values + packed mask)
    students     make_student, hidden-state and attention losses, DistillationTrainer
    evaluation   loading (with offline fallbacks), perplexity, sizes, latency, comparison, plots

Import from the modules: `from toolkit.layers import quantize_model`.
"""
