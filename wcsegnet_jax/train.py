"""Training: state, jitted train step, and the loop with its periodic actions.

The loop reads top to bottom: set-up, restore, then steps with logging, evaluation and
checkpointing at epoch ends. The step functions are pure and jit-compiled once; the state is
donated so parameters and optimizer moments are updated in place. Data parallel: a 1-D mesh over
all devices, the batch sharded along it, the state replicated.
"""

import contextlib
import functools
import math
import pathlib
import time
from typing import Any

from absl import logging
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from wcsegnet_jax import errors
from wcsegnet_jax import checkpointing
from wcsegnet_jax import config_lib
from wcsegnet_jax import evaluate
from wcsegnet_jax import input_pipeline
from wcsegnet_jax import losses
from wcsegnet_jax import metric_writers
from wcsegnet_jax import models
from wcsegnet_jax import parallel
from wcsegnet_jax import workdirs

# What a run writes in its workdir, checked before any data is built.
RUN_FOLDERS = ('checkpoints', 'tensorboard')
RUN_FILES = (workdirs.LOCK_FILE, checkpointing.CONFIG_FILE, checkpointing.DATA_FILE,
             metric_writers.METRICS_FILE)


TrainingDivergedError = errors.TrainingDivergedError
TrainingInterrupted = errors.TrainingInterrupted


class TrainState(train_state.TrainState):
  batch_stats: Any
  # Raw data of the base key (config.rng_impl); step s uses fold_in(key, s), so a resume needs
  # no RNG bookkeeping and the checkpoint holds plain uint32.
  rng: jax.Array


def make_optimizer(train_config: ml_collections.ConfigDict,
                   steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
  """Adam at `learning_rate` (the paper: 1e-4, constant); cosine with warm-up as an option."""
  lr = train_config.learning_rate
  if train_config.lr_schedule == 'cosine':
    warmup = int(train_config.warmup_epochs * steps_per_epoch)
    lr = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1))
  return optax.adam(lr)


def create_train_state(config: ml_collections.ConfigDict, model, seed,
                       tx: optax.GradientTransformation) -> TrainState:
  """Initialised parameters and optimizer state; `seed` may be traced (jit it)."""
  init_key, state_key = jax.random.split(jax.random.key(seed, impl=config.rng_impl))
  size = config.data.image_size
  variables = model.init(init_key, jnp.zeros((1, size, size, 3), jnp.float32), train=False)
  return TrainState.create(apply_fn=model.apply, params=variables['params'], tx=tx,
                           batch_stats=variables.get('batch_stats', {}),
                           rng=jax.random.key_data(state_key))


def train_step(state: TrainState, batch: dict, *, loss_fn, data_config,
               rng_impl: str) -> tuple[TrainState, dict]:
  """One Adam step on a batch of uint8 images and label maps."""
  images = input_pipeline.normalize_images(batch['image'], data_config.mean, data_config.std)
  labels = batch['label_map'].astype(jnp.int32)
  dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=rng_impl),
                                   state.step)

  def compute_loss(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images, train=True,
        rngs={'dropout': dropout_rng}, mutable=['batch_stats'])
    return loss_fn(logits, labels), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates['batch_stats'])
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return state, {'loss': loss, 'pixel_accuracy': accuracy}


def make_train_step(config: ml_collections.ConfigDict):
  """`train_step` with the config's loss, normalisation and PRNG bound (jit it)."""
  return functools.partial(train_step, loss_fn=losses.make_loss_fn(config.train),
                           data_config=config.data, rng_impl=config.rng_impl)


def variables_of(state: TrainState) -> dict:
  return {'params': state.params, 'batch_stats': state.batch_stats}


def divergence_message(loss: float, step: int, last_checkpoint: int | None,
                       checkpoint_dir: pathlib.Path, dtype: str) -> str:
  """What diverged, what is kept, and what to try: in a new workdir, since this one refuses a
  resume with another learning rate or dtype."""
  kept = (f'the last good checkpoint (step {last_checkpoint}) is kept in {checkpoint_dir}'
          if last_checkpoint is not None else 'no checkpoint was written yet')
  fixes = 'a lower train.learning_rate'
  if dtype != 'float32':
    fixes += f' or model.dtype=float32 (now {dtype})'
  return (f'loss is {loss} at step {step}; stopping: {kept}. Train again with {fixes} in a new '
          f'--workdir.')


def _check_finite(history: list[tuple[int, dict]], manager, dtype: str) -> None:
  """Raises TrainingDivergedError at the first step whose loss is not finite."""
  for step, m in history:
    if not math.isfinite(float(m['loss'])):
      raise TrainingDivergedError(divergence_message(
          float(m['loss']), step, manager.latest_step(), manager.directory, dtype))


def interrupted_message(step: int, last_checkpoint: int | None) -> str:
  if last_checkpoint is None:
    return f'interrupted at step {step}; no checkpoint yet; run the same command to start again'
  return (f'interrupted at step {step}; last checkpoint {last_checkpoint}; run the same command '
          f'to resume')


class Trainer:
  """Holds what the loop needs; `train_and_evaluate` drives it."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: pathlib.Path):
    self.config, self.workdir = config, workdir
    self.step = 0   # steps dispatched, counted on the host (the state is donated mid-step)
    self.parallel = dp = parallel.data_parallel()
    self.model = models.create_model(config.model)
    self.datasets = input_pipeline.load_datasets(config.data)
    self.steps_per_epoch = input_pipeline.steps_per_epoch(self.datasets, config)
    total = config.train.num_epochs * self.steps_per_epoch
    self.total_steps = min(total, config.train.max_steps) if config.train.max_steps else total
    tx = make_optimizer(config.train, self.steps_per_epoch, self.total_steps)
    init = functools.partial(create_train_state, config, self.model, tx=tx)
    self.state = jax.jit(init, out_shardings=dp.replicated)(config.seed)
    step_fn = make_train_step(config)
    self.train_step = jax.jit(step_fn, in_shardings=(dp.replicated, dp.batch),
                              out_shardings=(dp.replicated, dp.replicated), donate_argnums=0)
    self.eval_device = evaluate.local_eval_device()
    self.eval_step = jax.jit(evaluate.make_eval_step(self.model, config))
    self.train_iter = iter(input_pipeline.train_dataset(
        self.datasets, config, jax.process_index(), jax.process_count()))

  def evaluate(self) -> dict[str, float]:
    """Test-split metrics of every dataset, and their mean Dice for picking the best model."""
    scalars, dices = {}, []
    variables = evaluate.local_copy(variables_of(self.state), self.eval_device)
    for d in self.datasets:
      if d.test is None:
        continue
      result = evaluate.evaluate_source(self.eval_step, variables, d.test, d.name,
                                        self.config.eval.batch_size,
                                        lambda b: jax.device_put(b, self.eval_device))
      summary = evaluate.summarize(result)
      scalars.update(evaluate.scalar_summary(summary, f'test/{d.name}/'))
      if summary['paper']['dice'] is not None:
        dices.append(summary['paper']['dice'])
    if dices:
      scalars[checkpointing.BEST_METRIC] = float(np.mean(dices))
    return scalars


def train_and_evaluate(config: ml_collections.ConfigDict,
                       workdir: str | pathlib.Path) -> TrainState:
  """Trains (or resumes) in `workdir`; returns the final state."""
  started_at = time.time()   # time-to-accuracy counts data preparation and compilation too
  if config.train.distributed:
    jax.distributed.initialize()
  config_lib.validate(config, jax.device_count(), jax.process_count())
  workdir = workdirs.resolve(workdir)
  # Before any data is built or compiled: paths, the lock, and what a resume may change.
  workdirs.check_writable(workdir, RUN_FOLDERS, RUN_FILES)
  lock = workdirs.held(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    checkpointing.check_resume_config(workdir, config)
    return _train_in(config, workdir, started_at)


def _train_in(config: ml_collections.ConfigDict, workdir: pathlib.Path,
              started_at: float) -> TrainState:
  """Builds, restores and trains in a checked, held workdir."""
  trainer = Trainer(config, workdir)
  manager = checkpointing.make_manager(workdir, config.train.keep_checkpoints)
  step = manager.latest_step()
  record = input_pipeline.data_record(trainer.datasets)
  if step is not None:
    checkpointing.check_resume_data(workdir, record, config.train.resume_on_changed_data)
    trainer.state = checkpointing.restore(manager, step, trainer.state, trainer.train_iter)
    logging.info('Resumed from %s at step %d.', manager.directory, step)
  if jax.process_index() == 0:
    checkpointing.write_config(workdir, config)
    checkpointing.write_data_record(workdir, record)
  writer = metric_writers.MetricWriter(workdir, enabled=jax.process_index() == 0,
                                       resume_step=step, started_at=started_at)
  logging.info('%d steps per epoch, %d steps in all, %s parameters.', trainer.steps_per_epoch,
               trainer.total_steps, f'{models.count_params(trainer.state.params):,}')
  interrupted = False
  try:
    _train_loop(trainer, manager, writer)
  except KeyboardInterrupt:
    interrupted = True
  finally:
    writer.close()
    checkpointing.finish(manager)   # the save in flight completes (or its temporary is ignored)
  if interrupted:
    raise TrainingInterrupted(interrupted_message(trainer.step, manager.latest_step()))
  return trainer.state


def _train_loop(trainer: Trainer, manager, writer) -> None:
  config, spe = trainer.config, trainer.steps_per_epoch
  step = trainer.step = int(jax.device_get(trainer.state.step))
  history, timer = [], metric_writers.StepTimer(step)
  progress, first_step = None, step
  try:
    while step < trainer.total_steps:
      epoch = step // spe
      if progress is None and config.train.progress_bar and jax.process_index() == 0:
        progress = metric_writers.FinishedStepProgress(
            tqdm.tqdm(total=spe, initial=step % spe, desc=f'epoch {epoch + 1}', leave=False))
      batch = trainer.parallel.to_device(next(trainer.train_iter))
      dispatched_at = time.perf_counter()
      trainer.state, step_metrics = trainer.train_step(trainer.state, batch)
      if step - first_step in (0, 1):
        # The first step compiles; the second is timed once for the duration estimate.
        jax.block_until_ready(step_metrics)
        if step - first_step == 1:
          _warn_if_too_slow(time.perf_counter() - dispatched_at, trainer.total_steps - step,
                            config.name)
      history.append((step, step_metrics))
      step = trainer.step = step + 1
      if progress is not None:
        progress.dispatched(step_metrics)
      epoch_end = step % spe == 0 or step == trainer.total_steps
      if step % config.train.log_every_steps == 0 or epoch_end:
        history = jax.device_get(history)
        _check_finite(history, manager, config.model.dtype)
        writer.write(step, {**metric_writers.mean_of(history),
                            'images_per_second': timer.rate(step, config.train.batch_size),
                            'epoch': step / spe})
        history = []
      if epoch_end:
        if progress is not None:
          progress.close()
          progress = None
        _end_of_epoch(trainer, manager, writer, step)
  finally:
    if progress is not None:   # stopped mid-epoch (divergence, Ctrl-C): clear the bar's line
      progress.abandon()


def _warn_if_too_slow(seconds_per_step: float, steps_left: int, config_name: str) -> None:
  warning = metric_writers.training_time_warning(seconds_per_step, steps_left,
                                                 jax.default_backend(), config_name)
  if warning and jax.process_index() == 0:
    logging.warning('%s', warning)


def _end_of_epoch(trainer: Trainer, manager, writer, step: int) -> None:
  """Evaluates and checkpoints when due (always at the last step)."""
  t = trainer.config.train
  epoch, last = step // trainer.steps_per_epoch, step == trainer.total_steps
  do_eval = last or epoch % t.eval_every_epochs == 0
  do_ckpt = last or epoch % t.checkpoint_every_epochs == 0
  scalars = trainer.evaluate() if do_eval else {}
  if scalars:
    writer.write(step, scalars)
  if do_ckpt:
    checkpointing.save(manager, step, trainer.state, trainer.train_iter,
                       metrics={checkpointing.BEST_METRIC: scalars[checkpointing.BEST_METRIC]}
                       if checkpointing.BEST_METRIC in scalars else None)
