"""The training run: config -> data, frozen encoder, model, DeepSpeed engine -> steps, checkpoints,
evaluation, logs. ``Trainer.run`` reads top to bottom; helpers below it are small."""
from __future__ import annotations

import json
import os
import platform
import resource
import signal
import subprocess
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from s5video.data import ClipLoader, build_loader, loader_kwargs
from s5video.data.clips import ClipSpec
from s5video.models.encoders import create_encoder
from s5video.models.factory import build_model, head_classes, load_model_weights, model_weights
from s5video.models.heads import task_loss
from s5video.models.ssm import ssm_param_groups
from s5video.trainer.checkpoint import Checkpointer, consolidated_weights, resolve_resume, rng_state, set_rng_state
from s5video.trainer.config import Config, ConfigError, save_config, to_dict
from s5video.trainer.distributed import env_rank_world, init_distributed
from s5video.trainer.evaluate import SELECTION_METRIC, Evaluator
from s5video.trainer.optim import GatedAdamW, GatedLambdaLR, TrainState, skip_update, zeros_like_batch
from s5video.trainer.lifecycle import ExitDeadline, LauncherWatch, release_shm_names
from s5video.trainer.preflight import IDENTITY_FILE, elastic_resume, preflight, run_identity
from s5video.trainer.schedule import resolve_schedule, warmup_cosine
from s5video.trainer.logs import MetricsLogger, SampleKeyLog, console_line, plot_confusion, plot_curves

# Signals that make the trainer save at the next step boundary and exit 0: SIGTERM (Slurm
# preemption/scancel, a user's kill) and SIGUSR2 (Slurm's --signal=USR2@90 before the time limit,
# submitit's preemption signal; launchers/job.py requeues the job after it).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
# Every reason to stop early, as synced across ranks: the signals' names, and the launcher's exit
# (trainer.lifecycle.LauncherWatch).
LAUNCHER_EXITED = "launcher exited"
STOP_REASONS = tuple(s.name for s in STOP_SIGNALS) + (LAUNCHER_EXITED,)
# Seconds a rank may take to exit once its results (or stop checkpoint) are written, and once its
# launcher is gone; past them it dumps its thread stacks and exits 1 (trainer.lifecycle.ExitDeadline).
EXIT_DEADLINE_S = 30.0
ORPHAN_DEADLINE_S = 45.0


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=os.path.dirname(__file__),
                              timeout=5).stdout.strip() or None
    except Exception:
        return None


def cfg_model_line(cfg: Config) -> str:
    m = cfg.model
    return f"model.name={m.name}, width {m.width}, depth {m.depth}"


def make_engine(model: nn.Module, cfg: Config, sched, universal: bool = False):
    """The DeepSpeed engine of ``model``: AdamW over the SSM-aware parameter groups, warmup + cosine
    learning rate, ``train.zero_stage``, bf16 when asked, micro-batch ``data.batch_size`` and the
    schedule's (``sched``: :class:`trainer.schedule.Schedule`) gradient accumulation. ``universal``:
    it will load a DeepSpeed universal checkpoint (an elastic resume under ZeRO 1-3).

    Returns (engine, the :class:`trainer.optim.GatedAdamW` it steps: the trainer discards a step with it)."""
    import deepspeed
    t = cfg.train
    optimizer = GatedAdamW(ssm_param_groups(model, t.lr, t.weight_decay, t.ssm_lr), lr=t.lr, betas=(0.9, 0.999),
                           eps=t.adam_eps)
    lr = GatedLambdaLR(optimizer, warmup_cosine(t.warmup_steps, sched.max_steps))
    config = {"train_micro_batch_size_per_gpu": cfg.data.batch_size, "gradient_accumulation_steps": sched.grad_accum,
              "gradient_clipping": t.grad_clip, "zero_optimization": {"stage": t.zero_stage},
              "bf16": {"enabled": t.precision == "bf16"}, "steps_per_print": 10**9, "wall_clock_breakdown": False,
              "zero_allow_untested_optimizer": True, "checkpoint": {"load_universal": universal}}
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=lr, config=config)
    return engine, optimizer


class Trainer:
    def __init__(self, cfg: Config, config_path: str | None = None):
        self.cfg, self.config_path = cfg, config_path
        self.stop_reasons: set[str] = set()  # STOP_REASONS seen on this rank (signals, launcher exit)
        self.stopped_by: list[str] = []  # after run(): stop reasons seen by any rank, e.g. ["SIGUSR2"]
        self.deadline = ExitDeadline()
        # set up by _run(), in this order (the components the training loop composes):
        self.rank, self.world, self.device = 0, 1, torch.device("cpu")  # data-parallel position (init_distributed)
        self.classes: list[str] = []  # the shards' class names (manifest)
        self.launcher_watch: LauncherWatch | None = None
        self.log: MetricsLogger | None = None  # metrics.jsonl + TensorBoard (rank 0)
        self.sample_log: SampleKeyLog | None = None  # per-rank sample keys (logging.sample_keys)
        self.encoder = None  # the frozen frame encoder; None on cached features
        self.mean, self.std = (0.5,) * 3, (0.5,) * 3  # its normalisation
        self.token_shape: tuple = (None, None)  # one example's (L, D) decoder input
        self.cached_grid: tuple | None = None  # (T, H', W') of cached tokens
        self.loader: ClipLoader | None = None  # this rank's training batches
        self.batches = None  # the loader's running iterator (train_step reads it)
        self.sched = None  # trainer.schedule.Schedule: steps, accumulation, eval/checkpoint periods
        self.num_classes = 1
        self.engine = self.optimizer = None  # DeepSpeed engine, and the GatedAdamW it steps
        self.evaluator: Evaluator | None = None
        self.checkpointer: Checkpointer | None = None  # checkpoints/ and best/ of the run
        self.state = TrainState()  # step, non-finite streak, best validation

    def run(self) -> int:
        """Train and/or evaluate as configured; returns the exit code (0). However it ends - results
        written, stop signal, launcher gone, an exception - the process is bounded to exit
        (:mod:`trainer.lifecycle`)."""
        try:
            return self._run()
        except BaseException:
            self.deadline.arm(EXIT_DEADLINE_S, "the run failed")
            if self.loader is not None:
                self.loader.close()
            raise

    # ------------------------------------------------------------------ the run, top to bottom
    def _run(self) -> int:
        cfg = self.cfg
        manifest = preflight(cfg)  # a missing split, weights file or class mismatch stops here, before any process group
        # the world size where the launcher put it (WORLD_SIZE, or Slurm's SLURM_NTASKS under a plain srun),
        # before anything depends on it: e.g. DALI cannot resume on another world size
        elastic_resume(cfg, env_rank_world().world)
        self.classes = list(manifest.get("classes") or [])
        info = init_distributed()
        self.rank, self.world = info.rank, info.world
        self.checkpointer = Checkpointer(cfg.run.dir, self.rank, self.world, to_dict(cfg), cfg.checkpoint.keep_last)
        if dist.is_initialized():
            dist.barrier()  # every rank has mapped every peer's DeepSpeed shared-memory buffer
        release_shm_names(self.rank)
        self.launcher_watch = LauncherWatch(lambda: self.stop_reasons.add(LAUNCHER_EXITED), ORPHAN_DEADLINE_S,
                                            deadline=self.deadline)
        self.launcher_watch.start()
        self.device = torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
        bf16_on_cpu = cfg.train.precision == "bf16" and not torch.cuda.is_available()
        if bf16_on_cpu:
            cfg.train.precision = "fp32"  # bf16 on CPU is slow and gains nothing; fp16 DeepSpeed refuses on CPU
        for s in STOP_SIGNALS:  # save a checkpoint at the next step boundary, then exit 0
            signal.signal(s, lambda signum, _frame: self.stop_reasons.add(signal.Signals(signum).name))
        torch.manual_seed(cfg.run.seed + self.rank)
        run_dir = Path(cfg.run.dir)
        if self.rank == 0:  # only now, after preflight: a refused run leaves run.dir as it was
            save_config(cfg, run_dir)
            if cfg.run.mode != "eval":  # what this directory's checkpoints belong to (preflight.check_run_dir)
                tmp = run_dir / f".{IDENTITY_FILE}.tmp"
                tmp.write_text(json.dumps(run_identity(cfg, manifest), indent=1))
                os.replace(tmp, run_dir / IDENTITY_FILE)
        self.write_run_info(info)
        self.log = MetricsLogger(str(run_dir), self.rank == 0, cfg.logging.tensorboard)
        self.sample_log = SampleKeyLog(str(run_dir), self.rank, cfg.logging.sample_keys)
        if bf16_on_cpu:
            self.print("train.precision: bf16 requested but no GPU: training in fp32")

        if cfg.data.backend == "features":  # cached tokens: no video decoding, no encoder
            from s5video.data.features import feature_path
            self.encoder, self.mean, self.std = None, (0.5,) * 3, (0.5,) * 3
            meta = json.loads(Path(feature_path(cfg.data.features, cfg.data.train_split) + ".json").read_text())
            per_record = meta["num_tokens"] * (meta["frames"] if meta.get("clips") == "all_segments" else 1)
            self.token_shape = (per_record, meta["dim"])  # one example's (L, D)
            self.cached_grid = tuple(meta["grid"]) if meta.get("grid") else None  # (T, H', W') of the cached tokens
        else:
            self.encoder = create_encoder(cfg.model.encoder, cfg.model.encoder_weights, cfg.model.frame_tokens,
                                          cfg.model.spatial_grid).to(self.device)
            self.mean, self.std, self.token_shape = self.encoder.mean, self.encoder.std, (None, self.encoder.dim)
            self.cached_grid = None
        self.loader = self.build_train_loader()
        self.sched = S = resolve_schedule(cfg, self.loader.num_samples, self.world)
        self.num_classes = cfg.model.num_classes or len(self.classes) or 1
        model = self.build_model()
        resume = self.checkpointer.find(cfg.checkpoint.resume, cfg.train.zero_stage)
        self.engine, self.optimizer = make_engine(model, cfg, S, universal=resume is not None and
                                                  resume.tag == "universal")
        self.evaluator = Evaluator(cfg, self.engine, self.tokens, self.dummy_batch, mean=self.mean, std=self.std,
                                   num_classes=self.num_classes, rank=self.rank, world=self.world, device=self.device)

        self.state = st = TrainState()
        if resume is not None:
            # evaluation reads no training data: any backend may evaluate a checkpoint
            parts = {"train_state": st, **({"loader": self.loader} if cfg.run.mode != "eval" else {})}
            st.step = self.checkpointer.load(self.engine, resume, parts, seed=cfg.run.seed)
            self.print(f"resumed from {resume.path} at step {st.step}" + ("" if resume.world == self.world else
                       f" (elastic: saved by {resume.world} ranks, now {self.world}; the unread samples of the "
                       f"interrupted pass are dealt to the {self.world} ranks)"))
        if cfg.run.mode == "eval":
            return self.finish(evaluate_only=True)

        self.print(f"{cfg.run.mode}: {sum(p.numel() for p in model.parameters() if p.requires_grad):,} trainable "
                   f"parameters, world {self.world}, ZeRO stage {cfg.train.zero_stage}; "
                   f"{S.describe(self.world, cfg.data.batch_size)}")
        from tqdm import tqdm
        bar = tqdm(total=S.max_steps, initial=st.step, disable=self.rank != 0 or not cfg.logging.progress_bar,
                   dynamic_ncols=True)
        self.batches = iter(self.loader)
        window = {"loss": 0.0, "n": 0, "wait": 0.0, "t0": time.perf_counter(), "clips": 0}
        while st.step < S.max_steps:
            loss = self.train_step(st.step, window)
            if loss is None:
                st.nonfinite += 1
                self.print(f"step {st.step}: non-finite loss, step skipped ({st.nonfinite} in a row)")
                if st.nonfinite >= cfg.train.max_nonfinite_steps:
                    raise FloatingPointError(f"{st.nonfinite} non-finite losses in a row (train.max_nonfinite_steps="
                                             f"{cfg.train.max_nonfinite_steps}); stopping. Last checkpoint is valid.")
                continue
            st.nonfinite = 0
            st.step += 1
            bar.update(1)
            window["loss"] += loss
            window["n"] += 1
            if st.step % cfg.logging.every_steps == 0 or st.step == S.max_steps:
                self.log_train(st.step, window)
                window = {"loss": 0.0, "n": 0, "wait": 0.0, "t0": time.perf_counter(), "clips": 0}
            if cfg.run.mode == "finetune" and st.step % S.eval_every == 0 and st.step < S.max_steps:
                self.validate()
            self.stopped_by = self.sync_stop_reasons()
            if self.stopped_by:
                self.save()
                self.print(f"stopped ({', '.join(self.stopped_by)}): checkpoint saved at step {st.step}; exiting")
                bar.close()
                return self.shutdown(0)
            if st.step % S.checkpoint_every == 0 and st.step < S.max_steps:
                self.save()
        bar.close()
        self.save()
        return self.finish()

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self, step: int, window: dict) -> float | None:
        """One optimizer step: ``sched.grad_accum`` micro-batches on each rank, then AdamW. Returns the
        mean micro-batch loss, or None when a loss was non-finite on any rank: then the whole step
        is discarded (no partial gradient, no update, no schedule advance, the RNG as before it) and
        its micro-batches are consumed, so the run equals one whose data never held them."""
        last, skip, losses = self.sched.grad_accum - 1, False, []
        rng = rng_state()  # a discarded step leaves no trace, random draws included
        for micro in range(last + 1):
            # 1. the micro-batch (a virtual epoch's end: every rank reaches it at the same step)
            t = time.perf_counter()
            batch = self.next_batch()
            window["wait"] += time.perf_counter() - t
            self.sample_log.write(step + 1, batch)
            # 2. forward; a non-finite loss on any rank poisons the step on every rank
            if not skip:
                loss = self.forward_loss(batch, step)
                skip = not self.all_finite(loss)
            if skip:  # the rest of a poisoned step: zero losses of finite inputs keep DeepSpeed's micro-step
                loss = self.forward_loss(zeros_like_batch(batch), step) * 0.0  # count and ZeRO's reductions aligned
            else:
                losses.append(loss.item())
                window["clips"] += len(batch["video_id"]) * self.world
            # 3. backward: gradients accumulate over the micro-batches (ZeRO-2/3 reduce them as they come)
            self.engine.backward(loss)
            # 4. the accumulation boundary (micro == last): gradient clipping, AdamW, the lr schedule; DeepSpeed
            #    zeroes the gradients after it. A poisoned step closes the gate: its update is not applied.
            with skip_update(self.optimizer, skip and micro == last):
                self.engine.step()
        if skip:
            set_rng_state(rng)
            return None
        # 5. the momentum update (EMA: LSMCL's key encoder, S5's momentum S4), once per applied step
        self.update_momentum()
        return sum(losses) / len(losses)

    def next_batch(self) -> dict:
        """The next training micro-batch of this rank; a new virtual epoch when the last one ended."""
        batch = next(self.batches, None)
        if batch is None:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        return batch

    # ------------------------------------------------------------------ pieces
    def build_train_loader(self):
        cfg, d = self.cfg, self.cfg.data
        augment = dict(hflip=d.hflip, crop_ratio=tuple(d.crop_ratio),  # training augmentation, both modes
                       crop_scale=tuple(d.crop_scale) if d.crop_scale else None)
        if cfg.run.mode == "pretrain":
            spec = ClipSpec(mode="pretrain", long_frames=d.long_frames, long_seconds=d.long_seconds,
                            short_frames=d.short_frames, short_seconds=d.short_seconds,
                            short_inside_long=d.short_inside_long, **augment)
        else:
            spec = ClipSpec(mode="train", frames=d.frames, seconds=d.clip_seconds, sampling=d.sampling,
                            segment_seconds=d.segment_seconds, window_labels=d.window_labels, **augment)
        backend = "cpu" if cfg.model.task == "captioning" and d.backend == "auto" else d.backend  # captions: CPU path
        return build_loader(backend, d.shards, d.train_split, spec,
                            **loader_kwargs(cfg, mean=self.mean, std=self.std, rank=self.rank, world=self.world))

    def build_model(self) -> nn.Module:
        cfg = self.cfg
        model = build_model(cfg.model, self.token_shape[1],
                            head_classes(cfg.run.mode, cfg.model.task, cfg.model.num_classes, self.classes),
                            pretrain=cfg.run.mode == "pretrain")
        if cfg.run.init_from and cfg.run.mode != "pretrain":
            self.init_from(model, cfg.run.init_from)
        return model

    def init_from(self, model: nn.Module, path: str) -> None:
        """Load the weights of a pretraining run (its query encoder) or of a finetune run (a run dir or
        a checkpoint dir) into ``model`` (:func:`models.factory.load_model_weights`). Tensors of
        another shape (the head of a run with another class count) are left as initialised, and said so.

        Raises:
            ConfigError: nothing would load (another model), caught before the first step.
        """
        ckpt = resolve_resume("auto", path) if (Path(path) / "checkpoints").is_dir() else Path(path)
        if ckpt is None or not (ckpt / "meta.json").exists():
            raise FileNotFoundError(f"run.init_from: no complete checkpoint in {path}")
        sd = model_weights(consolidated_weights(ckpt, "state"))
        own = model.state_dict()
        reshaped = sorted(k for k, v in sd.items() if k in own and own[k].shape != v.shape)
        sd = {k: v for k, v in sd.items() if k not in reshaped}
        if not any(k in own for k in sd):
            raise ConfigError(f"run.init_from: {ckpt} has no tensor of this model ({cfg_model_line(self.cfg)}); "
                              "nothing would load. Point it at a run of the same model, or run.init_from=null")
        missing, unexpected = load_model_weights(model, sd)
        self.print(f"init_from {ckpt}: {len(sd) - len(unexpected)} tensors loaded; missing keys {missing}; "
                   f"unexpected keys {unexpected}")
        if reshaped:
            self.print(f"init_from: {', '.join(reshaped)} reinitialised: shape {tuple(own[reshaped[0]].shape)} here, "
                       "another in the checkpoint (a head of another class count starts anew)")

    def tokens(self, batch: dict, key: str = "video") -> tuple[torch.Tensor, tuple | None]:
        """Decoder input of a batch and its token grid: its cached ``tokens`` (features backend), else
        the frozen encoder's tokens of ``batch[key]`` (B, T, 3, S, S). Returns ((B, L, D), (T, H', W') or None)."""
        if "tokens" in batch:
            tok = batch["tokens"].to(self.device, non_blocking=True)
            return (tok.to(torch.bfloat16) if self.cfg.train.precision == "bf16" else tok), self.cached_grid
        return self.encode(batch[key])

    def dummy_batch(self) -> dict:
        """One all-zero input, for a rank that has run out of evaluation data while its peers have not."""
        d = self.cfg.data
        if self.encoder is None:
            return {"tokens": torch.zeros(1, *self.token_shape)}
        return {"video": torch.zeros(1, d.frames, 3, d.image_size, d.image_size)}

    def encode(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """The frozen encoder on video (B, T, 3, S, S): ((B, L, D) tokens, their (T, H', W') grid)."""
        tokens, grid = self.encoder(video.to(self.device, non_blocking=True))  # (B, L, D), (T, H', W')
        return (tokens.to(torch.bfloat16) if self.cfg.train.precision == "bf16" else tokens), grid

    def forward_loss(self, batch: dict, step: int) -> torch.Tensor:
        if self.cfg.run.mode == "pretrain":  # long and short clips alternately query and key
            query = "short" if step % 2 == 0 else "long"
            return self.engine(self.encode(batch["long"])[0], self.encode(batch["short"])[0], query=query)
        tokens, grid = self.tokens(batch, "video")  # (B, L, D), (T, H', W')
        if self.cfg.model.task == "captioning":  # the captioner's own cross-entropy on the batch's captions
            return self.engine(tokens, grid=grid, captions=list(batch["caption"]))
        out = self.engine(tokens, grid=grid)  # (B, C)
        t = self.cfg.train
        return task_loss(self.cfg.model.task, out, batch["label"].to(self.device), pos_weight=t.pos_weight,
                         label_smoothing=t.label_smoothing)

    def update_momentum(self) -> None:
        """The model's EMA update; under ZeRO-3 the partitioned parameters are gathered for it
        (outside forward they are empty placeholders) and re-partitioned afterwards."""
        import deepspeed
        module = self.engine.module
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=0,
                                               enabled=self.cfg.train.zero_stage == 3):
            module.update_momentum()

    def all_finite(self, loss: torch.Tensor) -> bool:
        ok = torch.tensor([float(torch.isfinite(loss.detach()).all())], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(ok, op=dist.ReduceOp.MIN)
        return bool(ok.item())

    def sync_stop_reasons(self) -> list[str]:
        """The STOP_REASONS seen by any rank (every rank gets the same list)."""
        t = torch.tensor([float(r in self.stop_reasons) for r in STOP_REASONS], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return [r for r, hit in zip(STOP_REASONS, t.tolist()) if hit]

    def log_train(self, step: int, w: dict) -> None:
        dt = max(1e-9, time.perf_counter() - w["t0"])
        peak = (torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available()
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
        gn = self.engine.get_global_grad_norm()
        m = {"loss": w["loss"] / max(1, w["n"]), "lr": self.engine.get_lr()[0],
             "grad_norm": float(gn) if gn is not None else float("nan"), "clips_per_s": w["clips"] / dt,
             "data_wait_pct": 100 * w["wait"] / dt, "peak_mem_gb": peak}
        self.log.log(step, "train", **m)
        self.print(console_line(step, self.sched.max_steps, m))

    def save(self) -> None:
        """A checkpoint of the engine, this rank's loader position and the :class:`TrainState`."""
        st = self.state
        self.checkpointer.save(self.engine, st.step, {"loader": self.loader, "train_state": st},
                               best_tag=(st.best or {}).get("tag"))

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, split: str, details: bool = False, stride: float | None = None):
        return self.evaluator(split, details, stride)

    def evaluate_strides(self, step: int, test: dict) -> dict:
        """The test split at each of ``data.eval_strides_seconds`` (0 = the clip length, no overlap)
        besides the configured stride (``test``: its metrics): {"<s>s": metrics}, printed side by
        side (seed 004's table)."""
        d = self.cfg.data
        out = {f"{d.eval_stride_seconds:g}s": test}
        for s in dict.fromkeys(x or d.clip_seconds for x in d.eval_strides_seconds):
            if f"{s:g}s" in out:
                continue
            m = self.evaluate(d.test_split, stride=s)
            out[f"{s:g}s"] = m
            self.log.log(step, f"{d.test_split}_stride{s:g}s", **m)
        key = SELECTION_METRIC[self.cfg.model.task]
        self.print(f"{d.test_split} {key} by window stride (windows of {d.clip_seconds:g} s): " + " | ".join(
            f"{k}{' (no overlap)' if float(k[:-1]) >= d.clip_seconds else ''} {m.get(key, float('nan')):.4f}"
            for k, m in out.items()))
        return out

    def validate(self) -> None:
        """Evaluate on the validation split; keep the weights of the best one (selection on val only)."""
        step, best = self.state.step, self.state.best
        m = self.evaluate(self.cfg.data.val_split)
        self.log.log(step, self.cfg.data.val_split, **m)
        self.print(f"step {step} {self.cfg.data.val_split}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()))
        key = SELECTION_METRIC[self.cfg.model.task]
        improved = best is None or (m[key] < best["value"] if key in ("mse", "loss") else m[key] > best["value"])
        if improved:
            tag = self.checkpointer.save_best(self.engine, step, keep={(best or {}).get("tag")})
            self.state.best = {"step": step, "value": m[key], "metric": key, "val": m, "tag": tag}

    def finish(self, evaluate_only: bool = False) -> int:
        cfg, step = self.cfg, self.state.step
        bad_samples, bad_shards = self.count_bad_data()
        results = {"steps": step, "mode": cfg.run.mode, "bad_samples_skipped": bad_samples,
                   "bad_shards_skipped": bad_shards}
        if bad_samples:
            self.print(f"data: {bad_samples} bad training samples were skipped (keys in the log)")
        if bad_shards:
            self.print(f"data: {bad_shards} training shard reads failed after every retry and were skipped "
                       "(URLs in the log)")
        if cfg.run.mode in ("finetune", "eval"):
            if not evaluate_only:
                self.validate()
                self.checkpointer.load_best(self.engine, self.state.best.get("tag", "state"))
            best = self.state.best
            test, details = self.evaluate(cfg.data.test_split, details=True)  # once, for the model selected on val
            self.log.log(step, cfg.data.test_split, **test)
            results.update(selected=best, test=test, val=(best or {}).get("val"), classes=self.classes,
                           test_confusion=details.get("confusion"))
            if self.rank == 0:
                with open(Path(cfg.run.dir) / f"predictions_{cfg.data.test_split}.jsonl", "w") as f:
                    f.writelines(json.dumps(r) + "\n" for r in details.get("predictions", []))
            self.print(f"{cfg.data.test_split} (model selected on {cfg.data.val_split} at step "
                       f"{(best or {}).get('step')}): " + ", ".join(f"{k} {v:.4f}" for k, v in test.items()))
            if cfg.data.eval_strides_seconds:
                results["test_by_stride"] = self.evaluate_strides(step, test)
        if self.rank == 0:
            rows = [json.loads(l) for l in open(Path(cfg.run.dir) / "metrics.jsonl")] if \
                (Path(cfg.run.dir) / "metrics.jsonl").exists() else []
            train = [r for r in rows if r["split"] == "train"]
            results["train"] = {"first_loss": train[0]["loss"], "final_loss": train[-1]["loss"]} if train else {}
            plot_curves(cfg.run.dir)
            if results.get("test_confusion"):
                plot_confusion(results["test_confusion"], results["classes"],
                               Path(cfg.run.dir) / f"confusion_{cfg.data.test_split}.png",
                               f"{cfg.model.name}, {cfg.data.test_split} (top-1 {results['test'].get('top1', 0):.2f})")
            tmp = Path(cfg.run.dir) / ".results.json.tmp"  # written last, atomically: the run's end
            tmp.write_text(json.dumps(results, indent=1))
            os.replace(tmp, Path(cfg.run.dir) / "results.json")
        return self.shutdown(0)

    def count_bad_data(self) -> tuple[int, int]:
        """(undecodable training samples, unreadable training shards) skipped by all ranks so far:
        the loaders' counts, summed over ranks (a shard is counted once per pass that failed it)."""
        n = torch.tensor([float(self.loader.bad_samples()), float(self.loader.bad_shards())], device=self.device)
        if dist.is_initialized():
            dist.all_reduce(n, op=dist.ReduceOp.SUM)
        return int(n[0].item()), int(n[1].item())

    # ------------------------------------------------------------------ housekeeping
    def write_run_info(self, info) -> None:
        import deepspeed
        hosts = [None] * self.world
        dist.all_gather_object(hosts, {"rank": self.rank, "host": info.host,
                                       "node": os.environ.get("SLURMD_NODENAME", info.host)})
        if self.rank == 0:
            Path(self.cfg.run.dir).mkdir(parents=True, exist_ok=True)
            with open(Path(self.cfg.run.dir) / "run_info.json", "w") as f:
                json.dump({"world_size": self.world, "ranks": hosts, "git_commit": git_commit(),
                           "config_file": self.config_path, "python": platform.python_version(),
                           "torch": torch.__version__, "deepspeed": deepspeed.__version__,
                           "cuda": torch.cuda.is_available(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}, f,
                          indent=1)

    def print(self, msg: str) -> None:
        if self.rank == 0:
            from tqdm import tqdm
            tqdm.write(msg)

    def shutdown(self, code: int) -> int:
        """Results or the stop checkpoint are written: stop the decode workers, the engine and the
        process group, within EXIT_DEADLINE_S (else stacks are dumped and the process exits 1)."""
        self.deadline.arm(EXIT_DEADLINE_S, f"rank {self.rank} finished (exit code {code})")
        self.launcher_watch.stop()
        self.loader.close()
        self.log.close()
        self.sample_log.close()
        self.engine.destroy()  # before the process group: ZeRO-3 otherwise may abort at exit on CPU
        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
        return code
