"""Student-style implementations of every exercise region, for `tools/fairness.py`.

Each part (a region: file and function) gets correct variants written the ways students write them
(the course skeleton's and the PyTorch tutorials' formulas, other orders of float operations,
loops, library calls) and single-mistake mutants. Code is written at column 0 and indented to the
region's place; it sees the names the region's TODO lines give.
"""

QUANTIZE = """
if self.quantization_format == "fp16":
    self.quantized_vector = x.half()
elif self.quantization_format == "int8":
    absmax = x.abs().max().item()
    self.alpha = {scale} / absmax if absmax > 0 else 1.0
    self.quantized_vector = torch.round(x * self.alpha).to(torch.int8)
elif self.quantization_format == "1.58bit":
    t = x.abs().mean()
    self.quantized_vector = (x {gt} t).to(torch.int8) - (x < -t).to(torch.int8)
else:
    self.quantized_vector = {sign}
"""
MIXED = """
outliers = (x.abs() {ge} limit).any(dim=0)
x_codes, cx = absmax_quantize(x.masked_fill(outliers, 0.0), dim=1)
w_codes, cw = absmax_quantize({w_int}, dim=0)
out = int8_matmul(x_codes, w_codes).float() * torch.outer(cx.squeeze(1), cw.squeeze(0)) / {scale}
out = out + {fp16}
"""
PRUNE = """
with torch.no_grad():
    for layer in layers:
        flat = layer.weight.view(-1)
        k = {count}
        flat[torch.topk(flat.abs(), k, largest={largest}).indices] = 0
"""
KD = "return F.kl_div(F.log_softmax(student_rows / temperature, dim=-1), F.softmax({teacher} / temperature, dim=-1), reduction={reduction}) * {factor}"

VARIANTS = {
    ("quantization.py", "QuantizedVector.quantize"): [
        ("literal formulas, Python-float alpha", True,
         QUANTIZE.format(scale="127.0", gt=">", sign="torch.where(x < 0, -1, 1).to(torch.int8)")),
        ("course skeleton: tensor alpha, thresholds, masks", True, """
fmt = self.quantization_format
if fmt == "fp16":
    self.quantized_vector = x.half()
elif fmt == "int8":
    absmax = torch.max(torch.abs(x))
    self.alpha = 127 / absmax if absmax > 0 else 1.0
    scaled_vector = x * self.alpha
    self.quantized_vector = torch.round(scaled_vector).to(torch.int8)
elif fmt == "1.58bit":
    threshold_pos = torch.mean(torch.abs(x))
    threshold_neg = -threshold_pos
    q = torch.zeros_like(x, dtype=torch.int8)
    q[x > threshold_pos] = 1
    q[x < threshold_neg] = -1
    self.quantized_vector = q
else:
    self.quantized_vector = torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x)).to(torch.int8)
"""),
        ("divide first, float64 mean, arithmetic sign", True, """
if self.quantization_format == "fp16":
    self.quantized_vector = x.to(torch.float16)
elif self.quantization_format == "int8":
    m = float(x.abs().max())
    self.alpha = 127 / m if m else 1.0
    self.quantized_vector = (x / m * 127).round().to(torch.int8) if m else torch.zeros_like(x, dtype=torch.int8)
elif self.quantization_format == "1.58bit":
    t = x.double().abs().mean()
    self.quantized_vector = torch.where(x.double() > t, 1, torch.where(x.double() < -t, -1, 0)).to(torch.int8)
else:
    self.quantized_vector = ((x >= 0).to(torch.int8) * 2 - 1)
"""),
        ("mutant: 128 for 127", False,
         QUANTIZE.format(scale="128.0", gt=">", sign="torch.where(x < 0, -1, 1).to(torch.int8)")),
        ("mutant: ternary >= threshold", False,
         QUANTIZE.format(scale="127.0", gt=">=", sign="torch.where(x < 0, -1, 1).to(torch.int8)")),
        ("mutant: torch.sign (zero -> 0)", False,
         QUANTIZE.format(scale="127.0", gt=">", sign="torch.sign(x).to(torch.int8)")),
        ("mutant: fp16 kept as float32", False,
         QUANTIZE.format(scale="127.0", gt=">", sign="torch.where(x < 0, -1, 1).to(torch.int8)").replace(
             "x.half()", "x.half().float()")),
    ],
    ("quantization.py", "QuantizedVector.dequantize"): [
        ("codes / alpha", True, """
if self.quantization_format == "fp16":
    return self.quantized_vector.float()
return self.quantized_vector / self.alpha
"""),
        ("cast first, then divide", True, """
if self.quantization_format == "int8":
    return self.quantized_vector.to(torch.float32) / self.alpha
return self.quantized_vector.to(torch.float32)
"""),
        ("times the reciprocal", True, "return self.quantized_vector.float() * (1.0 / self.alpha)\n"),
        ("mutant: times alpha", False, "return self.quantized_vector.float() * self.alpha\n"),
        ("mutant: fp16 stays half", False, """
if self.quantization_format == "fp16":
    return self.quantized_vector
return self.quantized_vector / self.alpha
"""),
    ],
    ("quantization.py", "absmax_quantize"): [
        ("where on the scale", True, """
absmax = torch.amax(torch.abs(x), dim=dim, keepdim=True)
scale = torch.where(absmax == 0, torch.ones_like(absmax), 127.0 / absmax)
codes = torch.round(x * scale).to(torch.int8)
"""),
        ("divide, then times 127", True, """
absmax = x.abs().amax(dim, keepdim=True)
codes = (x / torch.where(absmax > 0, absmax, 1.0) * 127).round().to(torch.int8)
"""),
        ("a loop of QuantizedVector slices", True, """
absmax = x.abs().amax(dim=dim, keepdim=True)
codes = torch.stack([QuantizedVector(s, "int8").quantized_vector for s in x.unbind(1 - dim)], dim=1 - dim)
"""),
        ("mutant: one absmax for the whole tensor", False, """
absmax = x.abs().amax(dim=dim, keepdim=True)
top = x.abs().max()
codes = torch.round(x * (127.0 / top if top > 0 else 1.0)).to(torch.int8)
"""),
        ("mutant: dimension dropped", False, """
absmax = x.abs().amax(dim=dim)
codes = torch.round(x * torch.where(absmax > 0, 127.0 / absmax, 1.0).unsqueeze(dim)).to(torch.int8)
"""),
        ("mutant: 128 for 127", False, """
absmax = x.abs().amax(dim=dim, keepdim=True)
codes = torch.round(x * torch.where(absmax > 0, 128.0 / absmax, 1.0)).to(torch.int8)
"""),
    ],
    ("quantization.py", "mixed_precision_forward"): [
        ("vectorised, outer product / 127**2", True,
         MIXED.format(ge=">=", w_int="w.masked_fill(outliers[:, None], 0.0)", scale="127**2",
                      fp16="(x[:, outliers].half() @ w[outliers].half()).float()")),
        ("course skeleton: QuantizedVector per row and column", True, """
outlier_mask = x.abs() >= limit
outlier_columns = outlier_mask.any(dim=0)
outlier_features = x[:, outlier_columns]
non_outlier_features = x[:, ~outlier_columns]
outlier_weights = w[outlier_columns, :]
non_outlier_weights = w[~outlier_columns, :]
out = torch.zeros(x.shape[0], w.shape[1])
if non_outlier_features.shape[1] > 0:
    cx = non_outlier_features.abs().max(dim=1).values
    cw = non_outlier_weights.abs().max(dim=0).values
    rows = [QuantizedVector(row, "int8").quantized_vector for row in non_outlier_features]
    cols = [QuantizedVector(col, "int8").quantized_vector for col in non_outlier_weights.T]
    int32_result = int8_matmul(torch.stack(rows), torch.stack(cols).T)
    elem_scales = torch.outer(cx, cw) / (127 * 127)
    out = int32_result * elem_scales
outlier_result = outlier_features.half() @ outlier_weights.half()
out = out + outlier_result.to(torch.float32)
"""),
        ("index_select, int32 matmul, row then column scale", True, """
cols = ((x.abs() >= limit).sum(dim=0) > 0).nonzero().flatten()
x_int = x.index_fill(1, cols, 0)
w_int = w.index_fill(0, cols, 0)
x_codes, cx = absmax_quantize(x_int, dim=1)
w_codes, cw = absmax_quantize(w_int, dim=0)
acc = torch.matmul(x_codes.int(), w_codes.int())
out = acc.float() * (cx / 127) * (cw / 127)
out += torch.mm(x.index_select(1, cols).half().float(), w.index_select(0, cols).half().float())
"""),
        ("mutant: > threshold", False,
         MIXED.format(ge=">", w_int="w.masked_fill(outliers[:, None], 0.0)", scale="127**2",
                      fp16="(x[:, outliers].half() @ w[outliers].half()).float()")),
        ("mutant: outlier weight rows kept in cw", False,
         MIXED.format(ge=">=", w_int="w", scale="127**2",
                      fp16="(x[:, outliers].half() @ w[outliers].half()).float()")),
        ("mutant: outliers in float32", False,
         MIXED.format(ge=">=", w_int="w.masked_fill(outliers[:, None], 0.0)", scale="127**2",
                      fp16="x[:, outliers] @ w[outliers]")),
        ("mutant: scaled by 127", False,
         MIXED.format(ge=">=", w_int="w.masked_fill(outliers[:, None], 0.0)", scale="127",
                      fp16="(x[:, outliers].half() @ w[outliers].half()).float()")),
    ],
    ("pruning.py", "apply_weight_pruning"): [
        ("topk, in place", True, PRUNE.format(count="round(pruning_percentage * flat.numel())", largest="False")),
        ("argsort and a mask", True, """
for layer in layers:
    w = layer.weight.data
    k = round(pruning_percentage * w.numel())
    order = torch.argsort(w.abs().flatten())
    mask = torch.ones(w.numel(), device=w.device)
    mask[order[:k]] = 0
    layer.weight.data = w * mask.view_as(w)
"""),
        ("sort, stable", True, """
with torch.no_grad():
    for layer in layers:
        n = layer.weight.numel()
        _, order = torch.sort(layer.weight.abs().reshape(-1), stable=True)
        layer.weight.reshape(-1)[order[:round(pruning_percentage * n)]] = 0.0
"""),
        ("torch.nn.utils.prune", True, """
for layer in layers:
    prune.l1_unstructured(layer, name="weight", amount=pruning_percentage)
    prune.remove(layer, "weight")
"""),
        ("mutant: prunes the largest", False,
         PRUNE.format(count="round(pruning_percentage * flat.numel())", largest="True")),
        ("mutant: int() instead of round()", False,
         PRUNE.format(count="int(pruning_percentage * flat.numel())", largest="False")),
        ("mutant: one global threshold", False, """
with torch.no_grad():
    everything = torch.cat([layer.weight.abs().flatten() for layer in layers])
    k = round(pruning_percentage * everything.numel())
    if k:
        threshold = everything.kthvalue(k).values
        for layer in layers:
            layer.weight[layer.weight.abs() <= threshold] = 0
"""),
    ],
    ("distillation.py", "compute_distillation_loss"): [
        ("F.kl_div, log-probability target", True, """
student_log_probs = F.log_softmax(student_rows / temperature, dim=-1)
teacher_log_probs = F.log_softmax(teacher_rows / temperature, dim=-1)
return F.kl_div(student_log_probs, teacher_log_probs, reduction="batchmean", log_target=True) * temperature**2
"""),
        ("course skeleton / textbook F.kl_div", True,
         KD.format(teacher="teacher_rows", reduction='"batchmean"', factor="temperature**2") + "\n"),
        ("PyTorch tutorial: sum p (log p - log q) / rows", True, """
soft_targets = F.softmax(teacher_rows / temperature, dim=-1)
soft_prob = F.log_softmax(student_rows / temperature, dim=-1)
return torch.sum(soft_targets * (soft_targets.log() - soft_prob)) / soft_prob.size()[0] * (temperature**2)
"""),
        ("sum reduction over a row count", True, """
log_q = torch.log_softmax(student_rows / temperature, -1)
p = torch.softmax(teacher_rows / temperature, -1)
return F.kl_div(log_q, p, reduction="sum") / student_rows.shape[0] * temperature * temperature
"""),
        ("mutant: no T**2", False, KD.format(teacher="teacher_rows", reduction='"batchmean"', factor="1") + "\n"),
        ("mutant: T instead of T**2", False,
         KD.format(teacher="teacher_rows", reduction='"batchmean"', factor="temperature") + "\n"),
        ("mutant: reduction='mean'", False,
         KD.format(teacher="teacher_rows", reduction='"mean"', factor="temperature**2") + "\n"),
        ("mutant: KL arguments swapped", False, """
return F.kl_div(F.log_softmax(teacher_rows / temperature, -1), F.softmax(student_rows / temperature, -1),
                reduction="batchmean") * temperature**2
"""),
    ],
    ("distillation.py", "distillation_objective"): [
        ("masked KD and CE", True, """
kd = compute_distillation_loss(student_logits, teacher_logits, temperature, mask=mask)
ce = F.cross_entropy(student_logits[mask], labels[mask])
return alpha * kd + (1 - alpha) * ce, {"kd": kd, "ce": ce}
"""),
        ("ignore_index cross-entropy on flattened logits", True, """
classes = student_logits.shape[-1]
KD = compute_distillation_loss(student_logits[mask], teacher_logits[mask], temperature)
CE = F.cross_entropy(student_logits.reshape(-1, classes), labels.reshape(-1), ignore_index=-100)
loss = alpha * KD + (1.0 - alpha) * CE
return loss, {"kd": KD, "ce": CE}
"""),
        ("nll of log_softmax", True, """
selected = student_logits[mask]
kd_term = compute_distillation_loss(selected, teacher_logits[mask], temperature)
ce_term = F.nll_loss(F.log_softmax(selected, dim=-1), labels[mask])
return kd_term * alpha + ce_term * (1 - alpha), {"kd": kd_term, "ce": ce_term}
"""),
        ("mutant: KD over every position", False, """
kd = compute_distillation_loss(student_logits, teacher_logits, temperature)
ce = F.cross_entropy(student_logits[mask], labels[mask])
return alpha * kd + (1 - alpha) * ce, {"kd": kd, "ce": ce}
"""),
        ("mutant: alpha on the wrong term", False, """
kd = compute_distillation_loss(student_logits, teacher_logits, temperature, mask=mask)
ce = F.cross_entropy(student_logits[mask], labels[mask])
return (1 - alpha) * kd + alpha * ce, {"kd": kd, "ce": ce}
"""),
    ],
    ("distillation.py", "teacher_and_student_outputs"): [
        ("no_grad teacher, then the student", True, """
with torch.no_grad():
    teacher_outputs = teacher_model(*batch.args, **batch.kwargs)
student_outputs = student_model(*batch.args, **batch.kwargs)
return student_outputs, teacher_outputs
"""),
        ("student first, then the teacher", True, """
student_outputs = student_model(*batch.args, **batch.kwargs)
with torch.no_grad():
    teacher_outputs = teacher_model(*batch.args, **batch.kwargs)
return student_outputs, teacher_outputs
"""),
        ("set_grad_enabled(False)", True, """
with torch.set_grad_enabled(False):
    teacher_out = teacher_model(*batch.args, **batch.kwargs)
return student_model(*batch.args, **batch.kwargs), teacher_out
"""),
        ("mutant: teacher not frozen", False, """
teacher_outputs = teacher_model(*batch.args, **batch.kwargs)
student_outputs = student_model(*batch.args, **batch.kwargs)
return student_outputs, teacher_outputs
"""),
        ("mutant: outputs swapped", False, """
with torch.no_grad():
    teacher_outputs = teacher_model(*batch.args, **batch.kwargs)
return teacher_outputs, student_model(*batch.args, **batch.kwargs)
"""),
    ],
    ("distillation.py", "optimizer_step"): [
        ("zero_grad, backward, step", True, "optimizer.zero_grad()\nloss.backward()\noptimizer.step()\n"),
        ("backward, step, zero_grad", True, "loss.backward()\noptimizer.step()\noptimizer.zero_grad()\n"),
        ("zero_grad(set_to_none=False)", True,
         "optimizer.zero_grad(set_to_none=False)\nloss.backward()\noptimizer.step()\n"),
        ("mutant: gradients never zeroed", False, "loss.backward()\noptimizer.step()\n"),
        ("mutant: no step", False, "optimizer.zero_grad()\nloss.backward()\n"),
    ],
}
