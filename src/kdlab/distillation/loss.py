"""DistillationLoss: the distillation objective, usable inside any training loop.

    loss_fn = kdlab.DistillationLoss(teacher, student, method="kd+at", input_shape=(3, 32, 32))
    optimizer = torch.optim.SGD(loss_fn.trainable_parameters(), lr=0.05, momentum=0.9)
    loss, terms = loss_fn(images, targets)

The teacher is frozen: eval mode, inference mode, never in the optimizer, its BatchNorm statistics
untouched. Only the taps the methods declare are captured, and when no method reads the teacher's logits
its forward stops after the last tap. Loss = ce_weight·CE + Σ weight_i·scale_i(epoch)·method_i; every
term is reported (already weighted) so that the terms add up to the loss.

Several teachers (`teacher=[t1, t2]`, `teacher_mix=[0.7, 0.3]`, normalised to sum 1): methods that read only
the teacher's logits see one combined teacher (`mix_teacher_logits`), every other method gets one instance per
teacher, with its own connectors, and its terms are the teacher_mix-weighted sum of the per-teacher terms
(kdlab.distillation.teachers). Methods never know how many teachers there are.

A method with `views > 1` (SSKD, MLKD) expands the batch (`expand_batch`: SSKD's rotations, MLKD's strong view;
view-major): the teacher and the student run on the expanded batch, that method reads all of it, CE and the other
methods read the first view (the batch as loaded).

Two-stage methods: `set_phase('init')` trains only the methods' `init_modules` on their `init_forward` terms;
`set_phase('main')` freezes each method's `frozen_in_main` submodules (see `_freeze_after_init`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from kdlab import methods as method_registry
from kdlab.data.augment import Mix
from kdlab.distillation.teachers import TeacherMix, check_teacher_classes, mix_teacher_logits, mix_weights, teacher_list
from kdlab.engine.distributed import average_gradients
from kdlab.engine.objectives import StepOutput, classification_loss
from kdlab.errors import KdlabError
from kdlab.methods.base import BuildContext, DistillBatch, Method
from kdlab.methods.taps import LOGITS, TapRecorder, available_taps, probe_shapes, resolve_taps

TapPaths = dict[str, str]  # symbolic tap name -> module path


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
        label_smoothing: ε of the CE term only (kdlab.engine.objectives.classification_loss); the methods'
            targets (the teacher's outputs, DKD's target class, ...) are never smoothed.
        normalization: the per-channel (mean, std) with which the images were normalised
            ((pixels in [0, 1] - mean) / std), for methods that augment in pixel space (MLKD's strong view);
            `kdlab distill` passes the dataset's.

    A batch mixed by kdlab.data.augment.BatchMixer (`mix=`): the teacher sees the same mixed images as the
    student; the CE term uses both labels and λ; methods get the images' own (primary) labels and indices,
    which hold the larger share λ >= 0.5 of every image.
    """

    def __init__(self, teacher: nn.Module | Sequence[nn.Module] | None, student: nn.Module, method: str = "kd",
                 taps: Mapping[str, Mapping[str, str]] | None = None, ce_weight: float | None = None,
                 hparams: Mapping[str, Mapping[str, Any]] | None = None,
                 input_shape: Sequence[int] | None = None, train_targets: torch.Tensor | None = None,
                 train_indices: torch.Tensor | None = None, epochs: int = 0, num_classes: int | None = None,
                 student_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 teacher_mix: Sequence[float] | None = None, label_smoothing: float = 0.0,
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None, **method_hparams: Any):
        super().__init__()
        hparams = _hparams_by_method(method, hparams, method_hparams)
        self.methods: nn.ModuleList = nn.ModuleList(method_registry.parse(method, hparams))
        self.student = student
        teachers = self._set_teachers(teacher, method, teacher_mix)
        self.teacher_train_mode = any(m.teacher_train_mode for m in self.methods)
        self.ce_weight = float(self.methods[0].ce_weight if ce_weight is None else ce_weight)
        self.label_smoothing = float(label_smoothing)
        self.student_input = student_input
        self.phase = "main"  # or "init": the initialisation stage of two-stage methods
        self._init_modules_frozen = False  # the methods' `frozen_in_main` modules (see `_freeze_after_init`)
        self.teacher_logits_needed = bool(teachers) and any(m.needs_teacher_logits() for m in self.methods)
        self.teacher_cache: Any = None  # per-sample teacher outputs (distillation.teacher_cache, --cache-teacher)
        taps = taps or {}
        s_points = _points(student, taps.get("student"))
        t_points = [_points(t, taps.get("teacher")) for t in teachers] or [{}]
        declared = [m.taps(s_points, t_points[0]) for m in self.methods]
        self._mix = TeacherMix(self.methods, [t for _, t in declared], self.teacher_mix, hparams)
        self._mixed = self._mix.mixed  # methods that read one combined teacher (several teachers only)
        self.teacher_methods = self._mix.copies  # one ModuleDict of further instances per teacher 2..N
        s_paths, t_paths = self._tap_paths(declared, taps, s_points, t_points)
        contexts = [BuildContext(student=student, teacher=t, student_points={**s_points, **s_paths},
                                 teacher_points={**points, **paths}, train_targets=train_targets,
                                 train_indices=train_indices, epochs=epochs, num_classes=num_classes or 0,
                                 normalization=_normalization(normalization))
                    for t, points, paths in zip(teachers or [None], t_points, t_paths, strict=True)]
        self._probe(contexts, s_paths, t_paths, input_shape, method)
        for ctx, instances in zip(contexts, self._instances_by_teacher(), strict=True):
            for m in instances:
                m.fit_to_run(epochs)  # epoch-counted defaults (warm-ups) follow the run's length
                m.build(ctx)  # connectors from the probed shapes
        # Persistent hooks, attached after probing (a teacher's may cut its forward short).
        self._student_taps = TapRecorder(student, s_paths)
        self._teacher_recorders = [TapRecorder(t, paths, stop_early=not self.teacher_logits_needed)
                                   for t, paths in zip(teachers, t_paths, strict=False)]

    # ------------------------------------------------------------------------------------------- building
    def _set_teachers(self, teacher: nn.Module | Sequence[nn.Module] | None, method: str,
                      teacher_mix: Sequence[float] | None) -> list[nn.Module]:
        """Register the teachers (frozen: no gradient, eval mode) and their teacher_mix; returns them all."""
        needs_teacher = any(m.needs_teacher for m in self.methods)
        teachers = teacher_list(teacher) if needs_teacher else []
        if not teachers and needs_teacher:
            raise KdlabError(f"method '{method}' needs a teacher; pass --teacher FILE (a kdlab checkpoint) or "
                             f"--teacher-model NAME --teacher-weights FILE")
        self.teacher = teachers[0] if teachers else None
        self.extra_teachers = nn.ModuleList(teachers[1:])  # teachers 2..N (empty: the single-teacher path)
        self.teacher_mix = mix_weights(teacher_mix, len(teachers)) if teachers else []
        for t in teachers:
            t.requires_grad_(False)
            t.eval()
        return teachers

    def _instances_by_teacher(self) -> list[list[Method]]:
        """The method instances that read each teacher: all methods for the first, the copies for the others."""
        return [list(self.methods), *(list(copies.values()) for copies in self.teacher_methods)]

    def _tap_paths(self, declared: list[tuple[list[str], list[str]]], taps: Mapping[str, Mapping[str, str]],
                   s_points: TapPaths, t_points: list[TapPaths]) -> tuple[TapPaths, list[TapPaths]]:
        """Module paths of the taps every method instance declared: the student's, and each teacher's."""
        per_teacher = [declared, *([m.taps(s_points, points) for m in copies.values()]
                                   for copies, points in zip(self.teacher_methods, t_points[1:], strict=True))]
        s_names = _unique(name for decl in per_teacher for s, _ in decl for name in s)
        t_names = [_unique(name for _, t in decl for name in t) for decl in per_teacher]
        s_paths = resolve_taps(self.student, s_names, taps.get("student"), "student")
        t_paths = [resolve_taps(t, names, taps.get("teacher"), "teacher") if names else {}
                   for t, names in zip(self.teachers, t_names, strict=False)] or [{}]
        return s_paths, t_paths

    def _probe(self, contexts: list[BuildContext], s_paths: TapPaths, t_paths: list[TapPaths],
               input_shape: Sequence[int] | None, method: str) -> None:
        """Tap shapes (and the class count) of the student and each teacher, from one zero batch."""
        reads_features = bool(s_paths or any(t_paths))
        if reads_features and input_shape is None:
            raise KdlabError(f"method '{method}' reads intermediate features; pass input_shape=(C, H, W) "
                             f"so their shapes can be probed")
        if input_shape is None or not (reads_features or len(self.teachers) > 1):
            return
        example = torch.zeros(2, *input_shape, device=next(self.student.parameters()).device)
        s_example = self.student_input(example) if self.student_input is not None else example
        student_shapes = probe_shapes(self.student, s_paths, s_example) if reads_features else {}
        for ctx, paths in zip(contexts, t_paths, strict=True):
            ctx.student_shapes = student_shapes
            if ctx.teacher is not None:
                ctx.teacher_shapes = probe_shapes(ctx.teacher, paths, example)
        check_teacher_classes([ctx.teacher_shapes[LOGITS][0] for ctx in contexts if ctx.teacher_shapes])
        for ctx in contexts:
            if not ctx.num_classes and student_shapes:
                ctx.num_classes = int(student_shapes[LOGITS][0])

    # ------------------------------------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> DistillationLoss:
        """Train the student and connectors; the teacher stays in eval mode unless a method asks otherwise."""
        super().train(mode)
        # A student that the current phase does not train keeps its BN statistics (eval mode).
        self.student.train(mode and self._student_trains_in_phase())
        for teacher in self.teachers:
            teacher.train(mode and self.teacher_train_mode)
        if self._init_modules_frozen:
            for module in self._frozen_in_main():
                module.eval()
        return self

    @property
    def teachers(self) -> list[nn.Module]:
        """All teachers, the first being `self.teacher` ([] for teacher-free methods)."""
        return [] if self.teacher is None else [self.teacher, *self.extra_teachers]

    @property
    def teacher_recorders(self) -> list[TapRecorder]:
        """One TapRecorder per teacher (same order as `teachers`): what each teacher's forward records."""
        return list(self._teacher_recorders)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the current phase updates: student and connectors, or the init stage's modules."""
        if self.phase == "init":
            seen: set[int] = set()
            for m in (inst for method in self.init_methods() for inst in self._mix.instances(method)):
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
        """Switch every method instance (those of teachers 2..N too) to 'init' or 'main'."""
        if phase not in ("init", "main"):
            raise ValueError(phase)
        self.phase = phase
        for m in (m for instances in self._instances_by_teacher() for m in instances):
            m.set_phase(phase)
        self._freeze_after_init(phase == "main")
        self.train(self.training)

    def _student_trains_in_phase(self) -> bool:
        """False in an init stage that trains only method modules (FT's paraphraser, MHGD's attention)."""
        if self.phase != "init":
            return True
        return any(module is self.student for m in self.init_methods() for module in m.init_modules(self.student))

    def _frozen_in_main(self) -> list[nn.Module]:
        """Submodules that the init stage trains and the main phase freezes: each instance's `frozen_in_main`
        attribute names (FT's paraphraser, MHGD's attention network)."""
        return [getattr(m, name) for instances in self._instances_by_teacher() for m in instances
                for name in getattr(m, "frozen_in_main", ())]

    def _freeze_after_init(self, frozen: bool) -> None:
        """Freeze (requires_grad off, eval mode, kept by `train`) or unfreeze the `frozen_in_main` modules.

        Called by `set_phase` and, for loops that never call it, by `forward` on a phase's first step (an
        optimizer built before then may hold the parameters; they get no gradient, so SGD skips them).
        """
        if frozen == self._init_modules_frozen:
            return
        for module in self._frozen_in_main():
            module.requires_grad_(not frozen)
            module.train(self.training and not frozen)
        self._init_modules_frozen = frozen

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
        teacher, recorder = self.teachers[index], self._teacher_recorders[index]
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
                epoch: int = 1, mix: Mix | None = None) -> StepOutput:
        self._freeze_after_init(self.phase == "main")
        expander = self.batch_expander()
        batches = self._batches(images if expander is None else expander.expand_batch(images), targets, indices,
                                epoch, mix)
        views = {}  # the expanding method reads every view; CE and the other methods read the batch as loaded
        if expander is not None:
            views = {id(expander): [replace(b, views=expander.views) for b in batches]}
            batches = [_first_view(b, images.shape[0]) for b in batches]
        logits = batches[0].student_logits
        if self.phase == "init":
            terms = {name: value for m in self.init_methods()
                     for name, value in self._mix.terms(m, views.get(id(m), batches), _init_forward).items()}
            total = sum(terms.values())
            return StepOutput(loss=total, terms={k: v.detach() for k, v in terms.items()}, logits=logits)
        ce = classification_loss(logits, targets, mix, self.label_smoothing)
        terms = {"ce": self.ce_weight * ce}
        total = terms["ce"]
        distilled = torch.zeros((), device=ce.device)  # the loss minus CE, for DOT (StepOutput.parts)
        clipped = None
        for m in self.methods:
            factor = m.weight * m.scale(epoch)
            for name, value in self._mix.terms(m, views.get(id(m), batches), _main_forward).items():
                value = factor * value
                terms[name] = value
                if m.clip_to_ce:
                    clipped = value if clipped is None else clipped + value
                else:
                    total = total + value
                    distilled = distilled + value
        out = StepOutput(loss=total if clipped is None else total + clipped,
                         terms={k: v.detach() for k, v in terms.items()}, logits=logits)
        if clipped is not None:
            out.backward = lambda scale=1.0: self._clipped_backward(total, clipped, epoch, scale)
        else:
            out.parts = (terms["ce"], distilled)
        return out

    def requested_optimizer(self) -> str | None:
        """The optimizer a method of the main phase trains with (`--method dot`), or None for optim.optimizer."""
        if self.phase != "main":
            return None
        return next((m.optimizer for m in self.methods if m.optimizer), None)

    def batch_expander(self) -> Method | None:
        """The method whose `expand_batch` gives the batch both networks see (SSKD's rotations), or None;
        `methods.parse` allows one such method per combination."""
        return next((m for m in self.methods if m.views > 1), None)

    def _batches(self, images: torch.Tensor, targets: torch.Tensor, indices: torch.Tensor | None,
                 epoch: int, mix: Mix | None = None) -> list[DistillBatch]:
        """One DistillBatch per teacher (one without teachers): the student's outputs and that teacher's."""
        teacher_logits, teacher_feats = self.teacher_outputs(images, indices=indices)
        if self._student_trains_in_phase():
            student_images = self.student_input(images) if self.student_input is not None else images
            logits = self._student_taps.run(student_images)
            student_feats = dict(self._student_taps.outputs)
        else:  # nothing in this init stage reads the student
            logits, student_feats = None, {}
        batch = DistillBatch(student_logits=logits, teacher_logits=teacher_logits, targets=targets,
                             indices=indices, epoch=epoch, student=student_feats, teacher=teacher_feats, mix=mix,
                             label_smoothing=self.label_smoothing)
        batches = [batch]
        for index in range(1, len(self.teachers)):
            extra_logits, extra_feats = self.teacher_outputs(images, index, indices)
            batches.append(replace(batch, teacher_logits=extra_logits, teacher=extra_feats))
        return batches

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

    def compile_networks(self, compile_fn=torch.compile) -> None:
        """--compile: the student's and every teacher's forward (their taps included) run compiled; parameters,
        state_dicts and the tap hooks stay the plain modules'."""
        for recorder in [self._student_taps, *self._teacher_recorders]:
            recorder.compile(compile_fn)

    def remove_hooks(self) -> None:
        for recorder in [self._student_taps, *self._teacher_recorders]:
            recorder.remove()


def _first_view(batch: DistillBatch, n: int) -> DistillBatch:
    """The rows of an expanded (view-major) batch that belong to the images as loaded: [0, n)."""
    def head(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t[:n]
    return replace(batch, student_logits=head(batch.student_logits), teacher_logits=head(batch.teacher_logits),
                   student={k: v[:n] for k, v in batch.student.items()},
                   teacher={k: v[:n] for k, v in batch.teacher.items()})


def _main_forward(m: Method, batch: DistillBatch) -> dict[str, torch.Tensor]:
    return m(batch)


def _init_forward(m: Method, batch: DistillBatch) -> dict[str, torch.Tensor]:
    return m.init_forward(batch)


def _hparams_by_method(method: str, hparams: Mapping[str, Mapping[str, Any]] | None,
                       method_hparams: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-method hyperparameters, with keyword hyperparameters added to the single method's."""
    merged = {k: dict(v) for k, v in (hparams or {}).items()}
    if method_hparams:
        names = [n for n in method.split("+") if n.strip()]
        if len(names) != 1:
            raise KdlabError("keyword hyperparameters need a single method; for a combination pass "
                             "hparams={'kd': {...}, 'at': {...}}")
        merged.setdefault(names[0].strip(), {}).update(method_hparams)
    return merged


def _normalization(value: tuple[Sequence[float], Sequence[float]] | None
                   ) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """`normalization=(mean, std)` as two tuples of floats (one per channel, std > 0); a wrong value in one line."""
    if value is None:
        return None
    try:
        mean, std = (tuple(float(v) for v in part) for part in value)
    except (TypeError, ValueError):
        mean = std = ()
    if not mean or len(mean) != len(std) or not all(s > 0 for s in std):
        raise KdlabError(f"normalization must be (mean, std) with one value per channel and std > 0, got {value!r}; "
                         f"e.g. normalization=((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))")
    return mean, std


def _unique(names: Iterable[str]) -> list[str]:
    """`names` in order, each once."""
    return list(dict.fromkeys(names))


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


__all__ = ["DistillationLoss", "mix_teacher_logits", "mix_weights"]
