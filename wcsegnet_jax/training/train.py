"""Training: state, jitted train step, and the loop with its periodic actions.

The loop reads top to bottom: set-up, restore, then steps with logging, evaluation and
checkpointing at epoch ends. The step functions are pure and jit-compiled once; the state is
donated so parameters and optimizer moments are updated in place. Data parallel: a 1-D mesh over
all devices, the batch sharded along it, the state replicated.
"""

import functools
import math
import pathlib
import sys
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

from wcsegnet_jax.core import classes
from wcsegnet_jax.core import config_checks
from wcsegnet_jax.core import config_keys
from wcsegnet_jax.core import errors
from wcsegnet_jax.core import run_files
from wcsegnet_jax.data import input_pipeline
from wcsegnet_jax.data import normalize
from wcsegnet_jax.data import tfds_builder
from wcsegnet_jax.data import typed_fields
from wcsegnet_jax.evaluation import evaluate
from wcsegnet_jax.model import checkpoints
from wcsegnet_jax.model import losses
from wcsegnet_jax.model import models
from wcsegnet_jax.model import restore
from wcsegnet_jax.training import checkpointing
from wcsegnet_jax.training import field_crops
from wcsegnet_jax.training import metric_writers
from wcsegnet_jax.training import parallel
from wcsegnet_jax.training import typer_fitting
from wcsegnet_jax.training import workdirs

# What a run writes in its workdir, checked before any data is built.
RUN_FOLDERS = ('checkpoints', 'tensorboard')
RUN_FILES = (
  workdirs.LOCK_FILE,
  run_files.CONFIG_FILE,
  run_files.DATA_FILE,
  run_files.CLASSES_FILE,
  run_files.METRICS_FILE,
)


TrainingDivergedError = errors.TrainingDivergedError
TrainingInterrupted = errors.TrainingInterrupted


class TrainState(train_state.TrainState):
  batch_stats: Any
  # Raw data of the base key (config.rng_impl); step s uses fold_in(key, s), so a resume needs
  # no RNG bookkeeping and the checkpoint holds plain uint32.
  rng: jax.Array


class AveragedTrainState(TrainState):
  """A train state that also keeps the parameters' moving average (train.ema_decay > 0):
  evaluated and exported, never trained. A class of its own, so the checkpoints of runs without
  an average keep the structure they always had."""

  ema_params: Any


def learning_rate_schedule(
  train_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.Schedule:
  """The learning rate at each step: `learning_rate` (the paper: 1e-4, constant), or cosine
  with warm-up as an option."""
  lr = train_config.learning_rate
  if train_config.lr_schedule == 'cosine':
    warmup = int(train_config.warmup_epochs * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1))
  return optax.constant_schedule(lr)


def make_optimizer(
  train_config: ml_collections.ConfigDict, steps_per_epoch: int, total_steps: int
) -> optax.GradientTransformation:
  """Adam at `learning_rate_schedule`."""
  return optax.adam(learning_rate_schedule(train_config, steps_per_epoch, total_steps))


def create_train_state(
  config: ml_collections.ConfigDict, model, seed, tx: optax.GradientTransformation
) -> TrainState:
  """Initialised parameters and optimizer state; `seed` may be traced (jit it)."""
  init_key, state_key = jax.random.split(jax.random.key(seed, impl=config.rng_impl))
  size = config.data.image_size
  variables = model.init(init_key, jnp.zeros((1, size, size, 3), jnp.float32), train=False)
  fields = dict(
    apply_fn=model.apply,
    params=variables['params'],
    tx=tx,
    batch_stats=variables.get('batch_stats', {}),
    rng=jax.random.key_data(state_key),
  )
  if config.train.ema_decay > 0:
    return AveragedTrainState.create(ema_params=variables['params'], **fields)
  return TrainState.create(**fields)


def initial_variables(config: ml_collections.ConfigDict) -> dict:
  """The variables `train.init_from` names (a shipped model or a workdir's latest checkpoint),
  checked to be a model of `config`'s architecture, classes and colour step."""
  source = str(config.train.init_from).strip()
  if restore.pretrained_dir(source) is not None:
    variables, _ = restore.load_variables(config, '.', source, also_free=config_keys.INIT_FREE)
  else:
    variables, _ = restore.load_variables(config, source, 'latest', also_free=config_keys.INIT_FREE)
  return variables


def with_variables(state: TrainState, variables: dict) -> TrainState:
  """`state` with the parameters (their average too) and BatchNorm statistics of `variables`."""
  state = state.replace(
    params=variables['params'], batch_stats=variables.get('batch_stats', state.batch_stats)
  )
  if isinstance(state, AveragedTrainState):  # its own buffers: the step donates both trees
    state = state.replace(ema_params=jax.tree.map(jnp.copy, variables['params']))
  return state


def ema_update(ema_params, params, step: jax.Array, decay: float):
  """The moving average after optimizer step `step` (1, 2, ...): its decay warms up as
  min(decay, (1 + step) / (10 + step)), so the random initialisation is forgotten within the
  first tens of steps instead of weighing on the average for ~1 / (1 - decay) steps."""
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema_params, params)


def train_step(
  state: TrainState, batch: dict, *, loss_fn, data_config, rng_impl: str, ema_decay: float
) -> tuple[TrainState, dict]:
  """One Adam step on a batch of uint8 images and label maps."""
  images = normalize.model_inputs(batch['image'], data_config)
  labels = batch['label_map'].astype(jnp.int32)
  dropout_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng, impl=rng_impl), state.step)

  def compute_loss(params):
    logits, updates = state.apply_fn(
      {'params': params, 'batch_stats': state.batch_stats},
      images,
      train=True,
      rngs={'dropout': dropout_rng},
      mutable=['batch_stats'],
    )
    return loss_fn(logits, labels), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(compute_loss, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates['batch_stats'])
  if ema_decay > 0:
    state = state.replace(
      ema_params=ema_update(
        state.ema_params, state.params, state.step.astype(jnp.float32), ema_decay
      )
    )
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  # The gradient's norm is logged and checked with the loss: a finite loss whose gradient is not
  # finite has already poisoned the parameters, and must stop the run before they are saved.
  return state, {'loss': loss, 'pixel_accuracy': accuracy, 'grad_norm': _global_norm(grads)}


def _global_norm(tree) -> jax.Array:
  """The L2 norm of all leaves together (optax.global_norm, deprecated in newer optax)."""
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def make_train_step(config: ml_collections.ConfigDict):
  """`train_step` with the config's loss, normalisation and PRNG bound (jit it)."""
  return functools.partial(
    train_step,
    loss_fn=losses.make_loss_fn(config.train),
    data_config=config.data,
    rng_impl=config.rng_impl,
    ema_decay=config.train.ema_decay,
  )


def variables_of(state: TrainState) -> dict:
  """The variables a run evaluates and exports: the parameters' average where it keeps one."""
  params = state.ema_params if isinstance(state, AveragedTrainState) else state.params
  return {'params': params, 'batch_stats': state.batch_stats}


def divergence_message(
  what: str, step: int, last_checkpoint: int | None, checkpoint_dir: pathlib.Path, dtype: str
) -> str:
  """What diverged ('loss is nan'), what is kept, and what to try: in a new workdir, since this
  one refuses a resume with another learning rate or dtype."""
  kept = (
    f'the last good checkpoint (step {last_checkpoint}) is kept in {checkpoint_dir}'
    if last_checkpoint is not None
    else 'no checkpoint was written yet'
  )
  fixes = 'a lower train.learning_rate'
  if dtype != 'float32':
    fixes += f' or model.dtype=float32 (now {dtype})'
  return f'{what} at step {step}; stopping: {kept}. Train again with {fixes} in a new --workdir.'


def _check_finite(
  steps: list[int], losses: np.ndarray, grad_norms: np.ndarray, manager, dtype: str
) -> None:
  """Raises TrainingDivergedError at the first step whose loss or gradient is not finite."""
  for step, loss, grad_norm in zip(steps, losses, grad_norms):
    for name, value in (('loss', loss), ('gradient norm', grad_norm)):
      if not math.isfinite(float(value)):
        raise TrainingDivergedError(
          divergence_message(
            f'{name} is {float(value)}', step, manager.latest_step(), manager.directory, dtype
          )
        )


def interrupted_message(step: int, last_checkpoint: int | None) -> str:
  if last_checkpoint is None:
    return f'interrupted at step {step}; no checkpoint yet; run the same command to start again'
  return (
    f'interrupted at step {step}; last checkpoint {last_checkpoint}; run the same command to resume'
  )


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | pathlib.Path
) -> TrainState:
  """Trains (or resumes) in `workdir`, evaluating and checkpointing as it goes; returns the
  final state. Set-up, restore, then the loop; its periodic actions are counted in steps."""
  started_at = time.time()  # time-to-accuracy counts data preparation and compilation too
  config_checks.validate(config, jax.device_count(), jax.process_count())
  if config.data.fields_dir:  # a lab's typed fields: every row checked before the workdir holds
    # anything, or a bad row found at the typer's fit would leave a run predict takes as fitted
    typed_fields.read_typed_fields(
      config.data.fields_dir, cell_types=classes.table_of(config.data).cell_types
    )
  workdir = workdirs.resolve(workdir)
  # Before any data is built or compiled: paths, the lock, and what a resume may change.
  workdirs.check_writable(workdir, RUN_FOLDERS, RUN_FILES)
  lead = jax.process_index() == 0
  with workdirs.held(workdir):  # process 0 holds it, for all processes
    # Fine-tuning the network on typed fields: pseudo-labelled crops first (with no epochs,
    # only the cell typer learns the lab's cells, at the end).
    if config.data.fields_dir and config.train.num_epochs:
      config = field_crops.prepare(config, workdir, initial_variables)
    checkpointing.check_resume_config(workdir, config)
    t, dp = config.train, parallel.data_parallel()
    model = models.model_for(config)
    datasets = input_pipeline.load_datasets(config.data)
    spe = input_pipeline.steps_per_epoch(datasets, config)
    if (oversized := input_pipeline.oversized_batch_warning(datasets, config)) and lead:
      logging.warning('%s', oversized)
    total_steps = min(t.num_epochs * spe, t.max_steps or t.num_epochs * spe)
    init = functools.partial(
      create_train_state, config, model, tx=make_optimizer(t, spe, total_steps)
    )
    state = jax.jit(init, out_shardings=dp.replicated)(config.seed)
    if t.init_from:  # a resume below restores its own parameters over these
      state = with_variables(state, jax.device_put(initial_variables(config), dp.replicated))
    train_step = jax.jit(
      make_train_step(config),
      in_shardings=(dp.replicated, dp.batch),
      out_shardings=(dp.replicated, dp.replicated),
      donate_argnums=0,
    )
    # Batches reach the device one step ahead (the copy overlaps the step); the iterator's
    # saved state is that of the last batch a step took, so a resume is exact.
    train_iter = input_pipeline.DevicePrefetch(
      iter(
        input_pipeline.train_dataset(datasets, config, jax.process_index(), jax.process_count())
      ),
      dp.to_device,
    )
    test_metrics = EvalDuringTraining(config, model, datasets)

    manager = checkpoints.make_manager(workdir, t.keep_checkpoints)
    resume_step, record = manager.latest_step(), input_pipeline.data_record(datasets)
    if resume_step is not None:
      checkpointing.check_resume_data(workdir, record, t.resume_on_changed_data, resume_step)
      state = checkpointing.restore(manager, resume_step, state, train_iter)
      logging.info('Resumed from %s at step %d.', manager.directory, resume_step)
    if lead:  # with the data paths as read, so that evaluate finds the data by itself
      run_files.write_config(workdir, with_data_paths(config))
      run_files.write_classes_record(workdir, classes.table_of(config.data).names)
      run_files.write_data_record(workdir, record)
    writer = metric_writers.MetricWriter(
      workdir, enabled=lead, resume_step=resume_step, started_at=started_at
    )
    logging.info(
      '%d steps per epoch, %d steps in all, %s parameters.',
      spe,
      total_steps,
      f'{models.count_params(state.params):,}',
    )

    # "Every N epochs" in steps, once; the last step does everything.
    due = lambda step, every: step % every == 0 or step == total_steps
    eval_every, ckpt_every = t.eval_every_epochs * spe, t.checkpoint_every_epochs * spe
    step = first_step = int(jax.device_get(state.step))
    history, timer = [], metric_writers.StepTimer(step)
    progress = RunProgress(total_steps, spe, enabled=t.progress_bar and lead)
    learning_rate = learning_rate_schedule(t, spe, total_steps)
    interrupted, failure = False, None
    if total_steps == 0 and manager.latest_step() is None:  # the initial model, kept as is
      checkpointing.save(manager, 0, state, train_iter, None)
    try:
      while step < total_steps:
        batch = next(train_iter)
        dispatched_at = time.perf_counter()
        state, step_metrics = train_step(state, batch)
        if step - first_step < 2:  # the first step compiles; the second is timed, once
          jax.block_until_ready(step_metrics)
          if step - first_step == 1:
            _warn_if_too_slow(time.perf_counter() - dispatched_at, total_steps - step, config.name)
        history.append((step, step_metrics))
        step += 1
        progress.finished(step, step_metrics)
        if due(step, t.log_every_steps) or due(step, spe):
          writer.write(
            step,
            {
              **_train_scalars(history, timer, step, spe, manager, config),
              'learning_rate': float(learning_rate(step - 1)),
            },
          )
          history = []
        scalars = test_metrics(state) if due(step, eval_every) else {}
        if scalars:
          writer.write(step, scalars)
        if due(step, ckpt_every):
          best = scalars.get(checkpoints.BEST_METRIC)
          checkpointing.save(
            manager,
            step,
            state,
            train_iter,
            None if best is None else {checkpoints.BEST_METRIC: best},
          )
    except KeyboardInterrupt:
      interrupted = True
    except BaseException as e:  # a divergence, an error: kept whatever the closing does
      failure = e
      raise
    finally:
      progress.abandon()  # stopped mid-epoch: what is printed next gets a line of its own
      close_run(writer, manager, failure, interrupted)
    if interrupted:
      raise TrainingInterrupted(interrupted_message(step, manager.latest_step()))
    if config.typer.fit and lead:
      typer_fitting.fit_into(workdir, config, jax.device_get(variables_of(state)), datasets)
    return state


def complete_checkpoints(directory: pathlib.Path) -> list[int]:
  """The steps whose checkpoint orbax finished (renamed from its temporary folder)."""
  directory = pathlib.Path(directory)
  return (
    sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
    if (directory.is_dir())
    else []
  )


def close_run(
  writer: metric_writers.MetricWriter,
  manager,
  failure: BaseException | None,
  interrupted: bool = False,
) -> None:
  """Closes the metric log and waits for the checkpoint in flight to complete (whatever the
  close raised). With a `failure` on its way out (a divergence, an error), a failure here is one
  logged line, so it never hides that one; a Ctrl-C during the wait is a TrainingInterrupted
  saying what the run leaves (`interrupted`: a second one, after the first stopped the loop)."""
  try:
    try:
      writer.close()
    finally:
      checkpointing.finish(manager)
  except KeyboardInterrupt:
    steps = complete_checkpoints(manager.directory)
    left = (
      f'last complete checkpoint {steps[-1]}; run the same command to resume'
      if steps
      else 'no complete checkpoint; run the same command to start again'
    )
    stopped = (
      f'{errors.user_error(failure) or failure}; then interrupted'
      if failure
      else 'interrupted again'
      if interrupted
      else 'interrupted'
    )
    raise TrainingInterrupted(
      f'{stopped} while the last checkpoint was being written (left out if incomplete); {left}'
    ) from None
  except Exception as e:  # pylint: disable=broad-except
    if failure is None:
      raise
    if errors.storage_failure(e) and errors.storage_failure(failure):
      return  # the same storage (a full disk) failing again: its line is the one on its way
    logging.error('While stopping: %s', errors.user_error(e) or e)


def with_data_paths(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose data paths are those the run reads (`tfds_builder.resolved_paths`)."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.data.update(tfds_builder.resolved_paths(config.data))
  return out


def _warn_if_too_slow(seconds_per_step: float, steps_left: int, config_name: str) -> None:
  warning = metric_writers.training_time_warning(
    seconds_per_step, steps_left, jax.default_backend(), config_name
  )
  if warning and jax.process_index() == 0:
    logging.warning('%s', warning)


def _train_scalars(
  history: list, timer, step: int, steps_per_epoch: int, manager, config: ml_collections.ConfigDict
) -> dict[str, float]:
  """The mean training metrics since the last log (fetched now; a non-finite loss stops the
  run), the throughput and the epoch."""
  names, n = sorted(history[0][1]), len(history)
  # Padded (with the last step's metrics) to the longest history there can be (logs come every
  # log_every_steps and at each epoch's end): one compilation of `stacked_metrics` for the whole
  # run, whatever the epoch ends cut off.
  longest = min(config.train.log_every_steps, steps_per_epoch)
  padded = [m for _, m in history] + [history[-1][1]] * (longest - n)
  values = jax.device_get(stacked_metrics(padded))[:n]  # one fetch
  _check_finite(
    [s for s, _ in history],
    values[:, names.index('loss')],
    values[:, names.index('grad_norm')],
    manager,
    config.model.dtype,
  )
  return {
    **metric_writers.mean_of(names, values),
    'images_per_second': timer.rate(step, config.train.batch_size),
    'epoch': step / steps_per_epoch,
  }


@jax.jit
def stacked_metrics(step_metrics: list[dict]) -> jax.Array:
  """(N, K) float32: the scalar metrics of N steps, one column per name (in sorted order), in
  one array, so logging fetches once, not N x K scalars."""
  return jnp.stack([jnp.stack([m[k].astype(jnp.float32) for k in sorted(m)]) for m in step_metrics])


class RunProgress:
  """One progress bar for the whole run, counting finished steps
  (metric_writers.FinishedStepProgress): its ETA is the run's; the epoch is in its label. Only
  on a terminal: a log file or pipe gets the log lines, without bar fragments."""

  def __init__(self, total_steps: int, steps_per_epoch: int, enabled: bool, stream=None):
    self.stream = sys.stderr if stream is None else stream
    self.total_steps, self.steps_per_epoch, self.bar = total_steps, steps_per_epoch, None
    self.enabled = enabled and self.stream.isatty()
    self.epochs = math.ceil(total_steps / steps_per_epoch)

  def _label(self, step: int) -> str:
    return f'epoch {min(step // self.steps_per_epoch + 1, self.epochs)}/{self.epochs}'

  def finished(self, step: int, step_outputs) -> None:
    """After dispatching the step that brings the count to `step`."""
    if not self.enabled:
      return
    if self.bar is None:
      self.bar = metric_writers.FinishedStepProgress(
        tqdm.tqdm(
          total=self.total_steps,
          initial=step - 1,
          leave=False,
          file=self.stream,
          unit='step',
          desc=self._label(step - 1),
          dynamic_ncols=True,
          bar_format='{desc} {percentage:3.0f}%|{bar}| step {n_fmt}/{total_fmt} '
          '[{elapsed}<{remaining}]',
        )
      )
    self.bar.dispatched(step_outputs)
    if step % self.steps_per_epoch == 0:
      self.bar.bar.set_description_str(self._label(step), refresh=False)

  def abandon(self) -> None:
    if self.bar is not None:
      self.bar.abandon()
      self.bar = None


class EvalDuringTraining:
  """Test-split metrics of every dataset during training, and their mean Dice (the best
  checkpoint's criterion); on one local device, whatever the training sharding. The test
  splits go to that device once, here, and stay there for every evaluation."""

  def __init__(self, config: ml_collections.ConfigDict, model, datasets):
    self.config = config
    self.device = evaluate.local_eval_device()
    self.eval_step = jax.jit(evaluate.make_eval_step(model, config))
    self.splits = [
      evaluate.upload_split(
        d.test, d.name, config.eval.batch_size, lambda b: jax.device_put(b, self.device)
      )
      for d in datasets
      if d.test is not None
    ]

  def __call__(self, state: TrainState) -> dict[str, float]:
    scalars, dices = {}, []
    variables = evaluate.local_copy(variables_of(state), self.device)
    for split in self.splits:
      result = evaluate.evaluate_split(self.eval_step, variables, split)
      summary = evaluate.summarize(result, classes.table_of(self.config.data))
      scalars.update(evaluate.scalar_summary(summary, f'test/{split.name}/'))
      if summary['paper']['dice'] is not None:
        dices.append(summary['paper']['dice'])
    if dices:
      scalars[checkpoints.BEST_METRIC] = float(np.mean(dices))
    return scalars
