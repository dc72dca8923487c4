"""DistillationLoss: the distillation objective, usable inside any training loop.

    loss_fn = kdlab.DistillationLoss(teacher, student, method="kd+at", input_shape=(3, 32, 32))
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.05, momentum=0.9)
    loss, terms = loss_fn(images, targets)

The teacher is frozen: eval mode, inference mode, never in the optimizer, its BatchNorm statistics
untouched. Only the taps the methods declare are captured, and when no method reads the teacher's logits
its forward stops after the last tap. Loss = ce_weight·CE + Σ weight_i·scale_i(epoch)·method_i; every
term is reported (already weighted) so that the terms add up to the loss.

Several teachers (`teacher=[t1, t2]`, `teacher_mix=[0.7, 0.3]`, normalised to sum 1): methods that read only
the teacher's logits see one combined teacher whose logits are T·log Σ_i w_i·σ_T(z_i) (`mix_teacher_logits`,
T = the method's temperature), so σ_T of it is the weighted mean of the teachers' distributions and KD is
exactly KD from the averaged soft targets; every other method (features, relations) gets one instance per
teacher, with its own connectors, and its terms are the teacher_mix-weighted sum of the per-teacher terms.
Methods never know how many teachers there are; with one teacher nothing of this runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kdlab import methods as method_registry
from kdlab.engine.distributed import average_gradients
from kdlab.engine.objectives import StepOutput
from kdlab.errors import KdlabError
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.taps import LOGITS, TapRecorder, available_taps, probe_shapes, resolve_taps


class DistillationLoss(nn.Module):
    """Student + frozen teacher(s) + methods -> (loss, terms). See the module docstring for usage.

    Args:
        teacher: a trained model, a list of them (several teachers, see the module docstring), or None for
            teacher-free methods (tfkd_virtual).
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
        teacher_mix: one weight >= 0 per teacher (default equal); normalised to sum 1. Tap overrides
            `taps['teacher']` apply to every teacher.
    """

    def __init__(self, teacher: nn.Module | Sequence[nn.Module] | None, student: nn.Module, method: str = "kd",
                 taps: Mapping[str, Mapping[str, str]] | None = None, ce_weight: float | None = None,
                 hparams: Mapping[str, Mapping[str, Any]] | None = None,
                 input_shape: Sequence[int] | None = None, train_targets: torch.Tensor | None = None,
                 train_indices: torch.Tensor | None = None,
                 epochs: int = 0, num_classes: int | None = None,
                 student_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 teacher_mix: Sequence[float] | None = None, **method_hparams: Any):
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
        teachers = _teacher_list(teacher) if needs_teacher else []
        if not teachers and needs_teacher:
            raise KdlabError(f"method '{method}' needs a teacher; pass --teacher FILE (a kdlab checkpoint) or "
                             f"--teacher-model NAME --teacher-weights FILE")
        self.teacher = teachers[0] if teachers else None
        self.extra_teachers = nn.ModuleList(teachers[1:])  # teachers 2..N (empty: the single-teacher path)
        self.teacher_mix = mix_weights(teacher_mix, len(teachers)) if teachers else []
        for t in teachers:
            t.requires_grad_(False)
            t.eval()
        self.teacher_train_mode = any(m.teacher_train_mode for m in self.methods)
        self.ce_weight = float(self.methods[0].ce_weight if ce_weight is None else ce_weight)
        self.student_input = student_input
        self.phase = "main"  # or "init": the initialisation stage of two-stage methods
        self.teacher_logits_needed = any(m.needs_teacher_logits() for m in self.methods) and needs_teacher
        # Per-sample teacher outputs for deterministic inputs (distillation.teacher_cache, --cache-teacher).
        self.teacher_cache: Any = None

        taps = taps or {}
        s_points = _points(student, taps.get("student"))
        t_points = [_points(t, taps.get("teacher")) for t in teachers] or [{}]
        s_names: list[str] = []
        t_names: list[list[str]] = [[] for _ in t_points]
        self._mixed: set[str] = set()  # methods that read one combined teacher (several teachers only)
        for m in self.methods:
            s, t = m.taps(s_points, t_points[0])
            s_names += [n for n in s if n not in s_names]
            t_names[0] += [n for n in t if n not in t_names[0]]
            if len(teachers) > 1 and m.needs_teacher and m.needs_teacher_logits() and set(t) <= {LOGITS}:
                self._mixed.add(m.name)
        # One instance per further teacher of each method that is not mixed (its own connectors).
        self.teacher_methods = nn.ModuleList()
        for i in range(1, len(teachers)):
            copies = nn.ModuleDict({m.name: method_registry.create(m.name, **hparams.get(m.name, {}))
                                    for m in self.methods if m.needs_teacher and m.name not in self._mixed})
            for m in copies.values():
                s, t = m.taps(s_points, t_points[i])
                s_names += [n for n in s if n not in s_names]
                t_names[i] += [n for n in t if n not in t_names[i]]
            self.teacher_methods.append(copies)
        s_paths = resolve_taps(student, s_names, taps.get("student"), "student")
        t_paths = [resolve_taps(t, names, taps.get("teacher"), "teacher") if names else {}
                   for t, names in zip(teachers, t_names, strict=False)] or [{}]

        contexts = [BuildContext(student=student, teacher=t, student_points={**s_points, **s_paths},
                                 teacher_points={**points, **paths}, train_targets=train_targets,
                                 train_indices=train_indices, epochs=epochs,
                                 num_classes=num_classes or 0)
                    for t, points, paths in zip(teachers or [None], t_points, t_paths, strict=True)]
        if s_paths or any(t_paths):
            if input_shape is None:
                raise KdlabError(f"method '{method}' reads intermediate features; pass input_shape=(C, H, W) "
                                 f"so their shapes can be probed")
        if input_shape is not None and (s_paths or any(t_paths) or len(teachers) > 1):
            device = next(student.parameters()).device
            example = torch.zeros(2, *input_shape, device=device)
            s_example = student_input(example) if student_input is not None else example
            student_shapes = probe_shapes(student, s_paths, s_example) if s_paths or any(t_paths) else {}
            for ctx in contexts:
                ctx.student_shapes = student_shapes
            for ctx, t, paths in zip(contexts, teachers, t_paths, strict=False):
                ctx.teacher_shapes = probe_shapes(t, paths, example)
            _check_teacher_classes([ctx.teacher_shapes[LOGITS][0] for ctx in contexts if ctx.teacher_shapes])
            for ctx in contexts:
                if not ctx.num_classes and student_shapes:
                    ctx.num_classes = int(student_shapes[LOGITS][0])
        for m in self.methods:
            m.build(contexts[0])
        for copies, ctx in zip(self.teacher_methods, contexts[1:], strict=True):
            for m in copies.values():
                m.build(ctx)
        # Persistent hooks, attached after probing (the teacher's may cut its forward short).
        self._student_taps = TapRecorder(student, s_paths)
        self._teacher_taps = (TapRecorder(self.teacher, t_paths[0], stop_early=not self.teacher_logits_needed)
                              if self.teacher is not None else None)
        self._extra_teacher_taps = [TapRecorder(t, paths, stop_early=not self.teacher_logits_needed)
                                    for t, paths in zip(teachers[1:], t_paths[1:], strict=True)]

    # ------------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> DistillationLoss:
        """Train the student and connectors; the teacher stays in eval mode unless a method asks otherwise."""
        super().train(mode)
        # A student that the current phase does not train keeps its BN statistics (eval mode).
        self.student.train(mode and self._student_trains_in_phase())
        for teacher in self.teachers:
            teacher.train(mode and self.teacher_train_mode)
        return self

    @property
    def teachers(self) -> list[nn.Module]:
        """All teachers, the first being `self.teacher` ([] for teacher-free methods)."""
        return [] if self.teacher is None else [self.teacher, *self.extra_teachers]

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the current phase updates: student and connectors, or the init stage's modules."""
        if self.phase == "init":
            seen: set[int] = set()
            for m in (inst for method in self.init_methods() for inst in self._instances(method)):
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
        for m in self.methods:
            m.set_phase(phase)
        self.train(self.training)

    def _student_trains_in_phase(self) -> bool:
        """False in an init stage that trains only method modules (FT's paraphraser, MHGD's attention)."""
        if self.phase != "init":
            return True
        return any(module is self.student for m in self.init_methods() for module in m.init_modules(self.student))

    def eval_models(self) -> dict[str, nn.Module]:
        return {"": self.student}

    def extra_state(self) -> dict[str, Any]:
        state = {"methods": self.methods.state_dict()}
        if len(self.teacher_methods):
            state["teacher_methods"] = self.teacher_methods.state_dict()
        return state

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("methods") is not None:
            self.methods.load_state_dict(state["methods"])
        if state.get("teacher_methods") is not None:
            self.teacher_methods.load_state_dict(state["teacher_methods"])

    # ------------------------------------------------------------------------------------------- step
    def teacher_outputs(self, images: torch.Tensor, index: int = 0, indices: torch.Tensor | None = None
                        ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Teacher `index`'s logits (if any method reads them) and taps, as constants outside autograd.

        With a `teacher_cache` and the batch's dataset `indices`, cached samples skip the teacher entirely;
        a teacher in train mode (batch statistics: outputs depend on the batch) never uses the cache.
        """
        if self.teacher is None:
            return None, {}
        teacher = self.teacher if index == 0 else self.extra_teachers[index - 1]
        recorder = self._teacher_taps if index == 0 else self._extra_teacher_taps[index - 1]
        cache = self.teacher_cache if indices is not None and not teacher.training else None
        if cache is not None:
            hit = cache.lookup(index, indices)
            if hit is not None:
                return hit
        # In train mode (OD's authors' setting) BN normalises with batch statistics; its running statistics
        # are restored afterwards so that the teacher itself never changes.
        saved = _bn_buffers(teacher) if teacher.training else None
        with torch.inference_mode():
            logits = recorder.run(images)
            feats = dict(recorder.outputs)
            if saved is not None:
                for buffer, value in saved:
                    buffer.copy_(value)
        # Inference tensors cannot be saved for backward; a clone makes them ordinary constants.
        logits = logits.clone() if logits is not None and self.teacher_logits_needed else None
        feats = {k: v.clone() for k, v in feats.items()}
        if cache is not None:
            cache.store(index, indices, logits, feats)
        return logits, feats

    def forward(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None = None,
                epoch: int = 1) -> StepOutput:
        teacher_logits, teacher_feats = self.teacher_outputs(images, indices=indices)
        if self._student_trains_in_phase():
            student_images = self.student_input(images) if self.student_input is not None else images
            logits = self._student_taps.run(student_images)
            student_feats = dict(self._student_taps.outputs)
        else:  # nothing in this init stage reads the student
            logits, student_feats = None, {}
        batch = DistillBatch(student_logits=logits, teacher_logits=teacher_logits, targets=targets,
                             indices=indices, epoch=epoch, student=student_feats, teacher=teacher_feats)
        batches = [batch]
        for index in range(1, 1 + len(self.extra_teachers)):
            extra_logits, extra_feats = self.teacher_outputs(images, index, indices)
            batches.append(replace(batch, teacher_logits=extra_logits, teacher=extra_feats))
        if self.phase == "init":
            terms = {name: value for m in self.init_methods()
                     for name, value in self._method_terms(m, batches, init=True).items()}
            total = sum(terms.values())
            return StepOutput(loss=total, terms={k: v.detach() for k, v in terms.items()}, logits=logits)
        ce = F.cross_entropy(logits.float(), targets)
        terms = {"ce": self.ce_weight * ce}
        total = terms["ce"]
        clipped = None
        for m in self.methods:
            factor = m.weight * m.scale(epoch)
            for name, value in (m(batch) if len(batches) == 1 else self._method_terms(m, batches)).items():
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

    def _instances(self, m: Method) -> list[Method]:
        """`m`'s instance for each teacher when it runs per teacher, else [m]."""
        if not len(self.teacher_methods) or m.name in self._mixed or not m.needs_teacher:
            return [m]
        return [m, *(copies[m.name] for copies in self.teacher_methods)]

    def _method_terms(self, m: Method, batches: list[DistillBatch], init: bool = False) -> dict[str, torch.Tensor]:
        """Terms of method `m` with several teachers: on the mixed teacher, or teacher_mix-weighted per teacher."""
        def run(inst: Method, batch: DistillBatch) -> dict[str, torch.Tensor]:
            return inst.init_forward(batch) if init else inst(batch)

        if m.name in self._mixed:
            temperature = float(m.hp.get("temperature", 1.0))
            mixed = mix_teacher_logits([b.teacher_logits for b in batches], self.teacher_mix, temperature)
            return run(m, replace(batches[0], teacher_logits=mixed))
        instances = self._instances(m)
        if len(instances) == 1:
            return run(m, batches[0])
        terms: dict[str, torch.Tensor] = {}
        for inst, batch, weight in zip(instances, batches, self.teacher_mix, strict=True):
            for name, value in run(inst, batch).items():
                terms[name] = weight * value if name not in terms else terms[name] + weight * value
        return terms

    def _clipped_backward(self, main: torch.Tensor, clipped: torch.Tensor, epoch: int, scale: float = 1.0) -> None:
        """Gradients of `main` plus those of `clipped`, the latter clipped per parameter to ‖∇main‖·sigmoid(e).

        KD-SVD (Lee et al. 2018) and MHGD (Lee & Song 2019) bound the distillation gradient by the task one.
        e is the 0-indexed epoch of the main phase (`epoch` - 1), as in the authors' code
        (github.com/sseung0703/KD_methods_with_TF, github.com/sseung0703/MHGD), so the first epoch is bounded
        at sigmoid(0) = 0.5·‖∇main‖. Parameters without a task gradient (connectors) keep their distillation
        gradient as it is. `scale` is the fp16 loss scale, applied to the final gradients so that the grad
        scaler can unscale them.
        Inside a process group (DDP) both gradients are averaged over ranks before clipping: autograd.grad
        bypasses DDP's reducer, and clipping the global batch's gradients matches a 1-process run.
        """
        params = list(self.trainable_parameters())
        g_main = average_gradients(torch.autograd.grad(main, params, retain_graph=True, allow_unused=True))
        g_clip = average_gradients(torch.autograd.grad(clipped, params, allow_unused=True))
        bound_scale = float(torch.sigmoid(torch.tensor(float(epoch - 1))))  # 0-indexed epoch, as the authors
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
        for recorder in [self._teacher_taps, *self._extra_teacher_taps]:
            if recorder is not None:
                recorder.remove()

    @property
    def method_list(self) -> list[Method]:
        return list(self.methods)


def _teacher_list(teacher: nn.Module | Sequence[nn.Module] | None) -> list[nn.Module]:
    if teacher is None:
        return []
    if isinstance(teacher, nn.Module):
        return [teacher]
    return list(teacher)


def mix_weights(mix: Sequence[float] | None, count: int) -> list[float]:
    """teacher_mix checked against the number of teachers and normalised to sum 1 (None: equal weights)."""
    if mix is None:
        return [1.0 / count] * count
    weights = [float(w) for w in mix]
    if len(weights) != count:
        raise KdlabError(f"teacher_mix has {len(weights)} weights for {count} teachers; give one weight per "
                         f"teacher, e.g. teacher_mix=[{', '.join(['0.5'] * count)}]")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise KdlabError(f"teacher_mix weights must be >= 0 with a positive sum, got {weights}")
    total = sum(weights)
    return [w / total for w in weights]


def mix_teacher_logits(teacher_logits: Sequence[torch.Tensor], weights: Sequence[float] | None = None,
                       temperature: float = 1.0) -> torch.Tensor:
    """Combined logits T·log Σ_i w_i·σ_T(z_i) of several teachers: σ_T of them is the weighted mean distribution.

    So KD against them is exactly KD from the averaged soft targets (`losses.kd_from_probs` on
    `losses.average_teacher_probs`), and logit-based methods (DKD, DIST, LS-KD, Tf-KD self) get a well-defined
    teacher. Computed as a logsumexp of log w_i + log σ_T(z_i), which stays finite where the mean underflows.
    """
    _check_teacher_classes([int(z.shape[-1]) for z in teacher_logits])
    weights = mix_weights(weights, len(teacher_logits))
    log_w = torch.tensor(weights, dtype=torch.float32, device=teacher_logits[0].device).log().view(-1, 1, 1)
    log_p = torch.stack([F.log_softmax(z.float() / temperature, dim=1) for z in teacher_logits])
    return temperature * torch.logsumexp(log_w + log_p, dim=0)


def _check_teacher_classes(counts: Sequence[int]) -> None:
    if len(set(int(c) for c in counts)) > 1:
        raise KdlabError(f"the teachers predict different numbers of classes ({', '.join(map(str, counts))}); "
                         f"use teachers trained on the same dataset and classes")


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
