"""DistillationLoss: the distillation objective, usable inside any training loop.

    loss_fn = kdlab.DistillationLoss(teacher, student, method="kd+at", input_shape=(3, 32, 32))
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.05, momentum=0.9)
    loss, terms = loss_fn(images, targets)

The teacher is frozen: eval mode, inference mode, never in the optimizer, its BatchNorm statistics
untouched. Only the taps the methods declare are captured, and when no method reads the teacher's logits
its forward stops after the last tap. Loss = ce_weight·CE + Σ weight_i·scale_i(epoch)·method_i; every
term is reported (already weighted) so that the terms add up to the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import methods as method_registry
from .engine.objectives import StepOutput
from .errors import KdlabError
from .methods.base import BuildContext, DistillBatch, Method
from .taps import LOGITS, TapRecorder, available_taps, probe_shapes, resolve_taps


class DistillationLoss(nn.Module):
    """Student + frozen teacher(s) + methods -> (loss, terms). See the module docstring for usage.

    Args:
        teacher: a trained model, or None for teacher-free methods (tfkd_virtual).
        student: the model being trained.
        method: one method name or a combination 'kd+at'.
        taps: {'student': {tap: module path}, 'teacher': {...}} for models without a tap table, or to
            override it.
        ce_weight: weight of cross-entropy; default: the first method's recommended value.
        hparams: per-method hyperparameters {'kd': {'temperature': 4}}; keyword arguments are a shortcut for
            a single method (`DistillationLoss(t, s, 'kd', temperature=2)`).
        input_shape: (C, H, W) of the inputs; needed to probe tap shapes for methods with connectors.
        train_targets: labels of the whole training set (CRD's memory bank).
        student_input: maps the batch the teacher sees to the student's input (cross-quality: low resolution).
    """

    def __init__(self, teacher: nn.Module | None, student: nn.Module, method: str = "kd",
                 taps: Mapping[str, Mapping[str, str]] | None = None, ce_weight: float | None = None,
                 hparams: Mapping[str, Mapping[str, Any]] | None = None,
                 input_shape: Sequence[int] | None = None, train_targets: torch.Tensor | None = None,
                 epochs: int = 0, num_classes: int | None = None,
                 student_input: Callable[[torch.Tensor], torch.Tensor] | None = None, **method_hparams: Any):
        super().__init__()
        hparams = {k: dict(v) for k, v in (hparams or {}).items()}
        if method_hparams:
            names = [n for n in method.split("+") if n.strip()]
            if len(names) != 1:
                raise KdlabError("keyword hyperparameters need a single method; for a combination pass "
                                 "hparams={'kd': {...}, 'at': {...}}")
            hparams.setdefault(names[0].strip(), {}).update(method_hparams)
        self.methods: nn.ModuleList = nn.ModuleList(method_registry.parse(method, hparams))
        self.method_spec = method
        self.student = student
        needs_teacher = any(m.needs_teacher for m in self.methods)
        if teacher is None and needs_teacher:
            raise KdlabError(f"method '{method}' needs a teacher; pass --teacher FILE (a kdlab checkpoint) or "
                             f"--teacher-model NAME --teacher-weights FILE")
        self.teacher = teacher if needs_teacher else None
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        self.teacher_train_mode = any(m.teacher_train_mode for m in self.methods)
        self.ce_weight = float(self.methods[0].ce_weight if ce_weight is None else ce_weight)
        self.student_input = student_input
        self.phase = "main"  # or "init": the initialisation stage of two-stage methods
        self.teacher_logits_needed = any(m.needs_teacher_logits() for m in self.methods) and needs_teacher

        taps = taps or {}
        s_points = _points(student, taps.get("student"))
        t_points = _points(self.teacher, taps.get("teacher"))
        s_names: list[str] = []
        t_names: list[str] = []
        for m in self.methods:
            s, t = m.taps(s_points, t_points)
            s_names += [n for n in s if n not in s_names]
            t_names += [n for n in t if n not in t_names]
        s_paths = resolve_taps(student, s_names, taps.get("student"), "student")
        t_paths = resolve_taps(self.teacher, t_names, taps.get("teacher"), "teacher") if t_names else {}

        ctx = BuildContext(student=student, teacher=self.teacher, student_points={**s_points, **s_paths},
                           teacher_points={**t_points, **t_paths}, train_targets=train_targets, epochs=epochs,
                           num_classes=num_classes or 0)
        if s_paths or t_paths:
            if input_shape is None:
                raise KdlabError(f"method '{method}' reads intermediate features; pass input_shape=(C, H, W) "
                                 f"so their shapes can be probed")
            device = next(student.parameters()).device
            example = torch.zeros(2, *input_shape, device=device)
            s_example = student_input(example) if student_input is not None else example
            ctx.student_shapes = probe_shapes(student, s_paths, s_example)
            if self.teacher is not None:
                ctx.teacher_shapes = probe_shapes(self.teacher, t_paths, example)
            if not ctx.num_classes:
                ctx.num_classes = int(ctx.student_shapes[LOGITS][0])
        for m in self.methods:
            m.build(ctx)
        # Persistent hooks, attached after probing (the teacher's may cut its forward short).
        self._student_taps = TapRecorder(student, s_paths)
        self._teacher_taps = (TapRecorder(self.teacher, t_paths, stop_early=not self.teacher_logits_needed)
                              if self.teacher is not None else None)

    # ------------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> DistillationLoss:
        """Train the student and connectors; the teacher stays in eval mode unless a method asks otherwise."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.train(mode and self.teacher_train_mode)
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the current phase updates: student and connectors, or the init stage's modules."""
        if self.phase == "init":
            seen: set[int] = set()
            for m in self.init_methods():
                for module in m.init_modules(self.student):
                    for p in module.parameters():
                        if p.requires_grad and id(p) not in seen:
                            seen.add(id(p))
                            yield p
            return
        yield from (p for p in self.parameters() if p.requires_grad)

    def init_methods(self) -> list[Method]:
        return [m for m in self.methods if m.has_init_stage]

    def set_phase(self, phase: str) -> None:
        if phase not in ("init", "main"):
            raise ValueError(phase)
        self.phase = phase

    def eval_models(self) -> dict[str, nn.Module]:
        return {"": self.student}

    def extra_state(self) -> dict[str, Any]:
        return {"methods": self.methods.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("methods") is not None:
            self.methods.load_state_dict(state["methods"])

    # ------------------------------------------------------------------------------------------- step
    def teacher_outputs(self, images: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Teacher logits (if any method reads them) and taps, as constants outside the autograd graph."""
        if self.teacher is None:
            return None, {}
        # In train mode (OD's authors' setting) BN normalises with batch statistics; its running statistics
        # are restored afterwards so that the teacher itself never changes.
        saved = _bn_buffers(self.teacher) if self.teacher.training else None
        with torch.inference_mode():
            logits = self._teacher_taps.run(images)
            feats = dict(self._teacher_taps.outputs)
            if saved is not None:
                for buffer, value in saved:
                    buffer.copy_(value)
        # Inference tensors cannot be saved for backward; a clone makes them ordinary constants.
        logits = logits.clone() if logits is not None and self.teacher_logits_needed else None
        return logits, {k: v.clone() for k, v in feats.items()}

    def forward(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None,
                epoch: int = 1) -> StepOutput:
        teacher_logits, teacher_feats = self.teacher_outputs(images)
        student_images = self.student_input(images) if self.student_input is not None else images
        logits = self._student_taps.run(student_images)
        student_feats = dict(self._student_taps.outputs)
        batch = DistillBatch(student_logits=logits, teacher_logits=teacher_logits, targets=targets,
                             indices=indices, epoch=epoch, student=student_feats, teacher=teacher_feats)
        if self.phase == "init":
            terms = {name: value for m in self.init_methods() for name, value in m.init_forward(batch).items()}
            total = sum(terms.values())
            return StepOutput(loss=total, terms={k: v.detach() for k, v in terms.items()}, logits=logits)
        ce = F.cross_entropy(logits.float(), targets)
        terms = {"ce": self.ce_weight * ce}
        total = terms["ce"]
        clipped = None
        for m in self.methods:
            factor = m.weight * m.scale(epoch)
            for name, value in m(batch).items():
                value = factor * value
                terms[name] = value
                if m.clip_to_ce:
                    clipped = value if clipped is None else clipped + value
                else:
                    total = total + value
        out = StepOutput(loss=total if clipped is None else total + clipped,
                         terms={k: v.detach() for k, v in terms.items()}, logits=logits)
        if clipped is not None:
            out.backward = lambda scale=1.0: self._clipped_backward(total, clipped, epoch, scale)
        return out

    def _clipped_backward(self, main: torch.Tensor, clipped: torch.Tensor, epoch: int, scale: float = 1.0) -> None:
        """Gradients of `main` plus those of `clipped`, the latter clipped per parameter to ‖∇main‖·sigmoid(epoch).

        KD-SVD and MHGD (METHODS.md §17, §18) bound the distillation gradient by the task gradient this way;
        parameters without a task gradient (connectors) keep their distillation gradient as it is. `scale` is
        the fp16 loss scale, applied to the final gradients so that the grad scaler can unscale them.
        """
        params = list(self.trainable_parameters())
        g_main = torch.autograd.grad(main, params, retain_graph=True, allow_unused=True)
        g_clip = torch.autograd.grad(clipped, params, allow_unused=True)
        bound_scale = float(torch.sigmoid(torch.tensor(float(epoch))))
        for p, gm, gc in zip(params, g_main, g_clip, strict=True):
            if gc is not None and gm is not None:
                bound = gm.norm() * bound_scale
                norm = gc.norm()
                gc = gc * torch.where(norm > bound, bound / norm.clamp_min(1e-12), torch.ones_like(norm))
            grad = gm if gc is None else (gc if gm is None else gm + gc)
            if grad is not None:
                grad = grad * scale
                p.grad = grad if p.grad is None else p.grad + grad

    def remove_hooks(self) -> None:
        self._student_taps.remove()
        if self._teacher_taps is not None:
            self._teacher_taps.remove()

    @property
    def method_list(self) -> list[Method]:
        return list(self.methods)


def _points(model: nn.Module | None, overrides: Mapping[str, str] | None) -> dict[str, str]:
    """The model's tap table, or {} when it has none (fine for logit-only methods)."""
    if model is None:
        return {}
    try:
        return available_taps(model, overrides)
    except KdlabError:
        return dict(overrides or {})


def _bn_buffers(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(buffer, copy) of every batch-norm running statistic of `model`."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
            for buffer in (module.running_mean, module.running_var, module.num_batches_tracked):
                if buffer is not None:
                    saved.append((buffer, buffer.clone()))
    return saved
