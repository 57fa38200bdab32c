"""What each config key is for, declared once: the roles that decide which keys may change when a
run resumes, when a model is evaluated or fine-tuned, and which are paths of one machine; and the
values each enumerated key takes. `configs/base.py` holds the keys themselves and their defaults.

A key's roles (a key under a section named here takes the section's roles):
  DATA_LOCATION  where the data lives on this machine: a run records it for its evaluation
                 (`tfds_builder.with_recorded_paths`), a shipped model drops it
  MACHINE_PATH   a path of the machine that ran it: a shipped model drops it
  RESUME_FREE    a resume may change it: how fast data is read, how long and how often things
                 happen, evaluation. Every other key, including any added later, must keep its
                 value, or the resumed run would silently train something else (more epochs may
                 be added to a finished run: a cosine schedule then stretches its tail)
  EVAL_FREE      evaluating or predicting with a trained model may change it: regularisation used
                 only in training, the arithmetic's precision, which images are evaluated. Within
                 the model and data sections (EVAL_CHECKED) every other key fixes what the model
                 computes: another value fails to restore (widths, depth) or, worse, silently
                 computes something else (activation, padding, normalisation, image size)
  INIT_FREE      starting training from a model (train.init_from) may change it besides EVAL_FREE
"""

DATA_LOCATION, MACHINE_PATH = 'data location', 'machine path'
RESUME_FREE_ROLE, EVAL_FREE_ROLE, INIT_FREE_ROLE = 'resume-free', 'eval-free', 'init-free'

_WHERE = {DATA_LOCATION, MACHINE_PATH, RESUME_FREE_ROLE, EVAL_FREE_ROLE}
KEY_ROLES = {
  'name': {RESUME_FREE_ROLE},
  'xla_flags': {RESUME_FREE_ROLE},
  'data.raw_dir': _WHERE,
  'data.tfds_dir': _WHERE,
  'data.folder_dir': _WHERE,
  'data.datasets': {EVAL_FREE_ROLE},
  'data.dataset_repeats': {EVAL_FREE_ROLE},
  'data.mask_level_tolerance': {EVAL_FREE_ROLE},
  'data.mask_max_off_level_fraction': {EVAL_FREE_ROLE},
  'data.fields_dir': {EVAL_FREE_ROLE},
  'data.fields_scale': {EVAL_FREE_ROLE},
  'data.test_fraction': {INIT_FREE_ROLE},
  'data.split_seed': {INIT_FREE_ROLE},
  'model.encoder_dropout': {EVAL_FREE_ROLE},
  'model.decoder_dropout': {EVAL_FREE_ROLE},
  'model.decoder_dropout_stages': {EVAL_FREE_ROLE},
  'model.head_dropout': {EVAL_FREE_ROLE},
  'model.bn_momentum': {EVAL_FREE_ROLE},
  'model.dtype': {EVAL_FREE_ROLE},
  'input.read_threads': {RESUME_FREE_ROLE},
  'input.prefetch': {RESUME_FREE_ROLE},
  'input.worker_buffer_size': {RESUME_FREE_ROLE},
  'train.num_epochs': {RESUME_FREE_ROLE},
  'train.max_steps': {RESUME_FREE_ROLE},
  'train.log_every_steps': {RESUME_FREE_ROLE},
  'train.eval_every_epochs': {RESUME_FREE_ROLE},
  'train.checkpoint_every_epochs': {RESUME_FREE_ROLE},
  'train.keep_checkpoints': {RESUME_FREE_ROLE},
  'train.progress_bar': {RESUME_FREE_ROLE},
  'train.distributed': {RESUME_FREE_ROLE},
  'train.join_timeout_s': {RESUME_FREE_ROLE},
  'train.heartbeat_timeout_s': {RESUME_FREE_ROLE},
  'train.resume_on_changed_data': {RESUME_FREE_ROLE},
  'eval': {RESUME_FREE_ROLE},
  'eval.raw_dir': {MACHINE_PATH, RESUME_FREE_ROLE},
  'typer': {RESUME_FREE_ROLE},  # the cell typer is fitted after the network's training
}


def keys_with(role: str) -> tuple[str, ...]:
  """The keys (or sections) that have `role`, in KEY_ROLES' order."""
  return tuple(key for key, roles in KEY_ROLES.items() if role in roles)


DATA_LOCATION_KEYS = keys_with(DATA_LOCATION)
MACHINE_PATHS = keys_with(MACHINE_PATH)
RESUME_FREE = tuple(k for k in keys_with(RESUME_FREE_ROLE) if not k.startswith('eval.'))
EVAL_CHECKED = ('model', 'data')
EVAL_FREE = keys_with(EVAL_FREE_ROLE)
INIT_FREE = keys_with(INIT_FREE_ROLE)

# The values an enumerated key takes; the code that reads the key acts on each of them
# (`decoding.RULES` and `color.COLOR_STEPS` are these).
CHOICES = {
  'rng_impl': ('rbg', 'threefry2x32'),  # names jax.random.key(impl=...) takes
  'model.activation': ('relu', 'leaky_relu'),
  'model.block_norm': ('none', 'batch'),
  'model.upsample': ('transpose', 'nearest'),
  'model.pad_mode': ('reflect', 'constant', 'edge'),
  'model.dtype': ('float32', 'bfloat16'),
  'train.lr_schedule': ('constant', 'cosine'),
  'train.loss': ('ce', 'dice_ce'),
  'augment.fill_mode': ('nearest', 'reflect', 'constant'),
  'eval.raw_layout': ('auto', 'wbc', 'folder'),
  'eval.decode': ('argmax', 'by_part'),
  'data.normalize': ('dataset', 'per_image'),
  'data.color': ('none', 'reinhard', 'two_point'),
}
# The names data.datasets takes: the WBC Image Dataset's two subsets (`records.WBC_SUBSETS`) and
# a plain folder (data.folder_dir).
DATASETS = ('cellavision', 'jiangxi', 'folder')
