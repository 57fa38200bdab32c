"""Every knob of wcsegnet_jax, at the paper's values (WCSegNet, Nasser et al. 2025).

Other configs import this one and change a few fields. Values are validated once, at start-up,
by `wcsegnet_jax.config_lib.validate`.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = 'wcseg'
  c.seed = 0
  # PRNG of initialisation and dropout. 'rbg' (XLA's RngBitGenerator) compiles in seconds where
  # JAX's default partitionable threefry takes ~20 s for even a tiny net on a CPU, and is fast
  # on GPUs; 'threefry2x32' gives JAX's default streams.
  # Data-parallel runs keep 'rbg': XLA does not split RngBitGenerator over devices, so every
  # device draws the dropout bits of the whole global batch and keeps its own rows (no
  # communication, no all-gather; the masks do not depend on the device count). The paper
  # model draws 6 MiB per image, 96 MiB per step at batch 16 on each device: tens of
  # microseconds at a GPU's bandwidth, a few % of an 8-GPU step by estimate, more with more
  # devices. Partitionable threefry draws only each device's rows: the choice for many devices
  # or large global batches, at 2x the step's compile time (docs/benchmarks.md, "GPU-path
  # changes, measured on CPU").
  c.rng_impl = 'rbg'
  # Extra XLA flags ('--xla_...=value ...'), set before JAX starts (wcsegnet_jax/core/xla_flags.py);
  # flags in the XLA_FLAGS environment variable take precedence. configs/cpu.py sets its own.
  c.xla_flags = ''

  # --- Data -------------------------------------------------------------------------------------
  c.data = d = ml_collections.ConfigDict()
  # Folder holding `Dataset 1/`, `Dataset 2/` and the class CSVs of the WBC Image Dataset.
  # '' reads the environment variable WCSEG_DATA_DIR; if that is unset too, the public
  # archive is downloaded by TFDS.
  d.raw_dir = ''
  # Folder of the `folder` source (images/, masks/, optional labels.csv); see README.
  d.folder_dir = ''
  # Where the TFDS builds (array_record) go. '' reads WCSEG_TFDS_DIR, else ~/tensorflow_datasets.
  d.tfds_dir = ''
  d.datasets = ('jiangxi', 'cellavision')  # trained on their union, evaluated one by one
  d.image_size = 120
  # The cell types kept (of neutrophil, lymphocyte, monocyte, eosinophil, basophil), in the order
  # of their class ids: 0 is background, then these (their nucleus pixels), so the paper's three
  # give its map 0 background, 1 neutrophil, 2 basophil, 3 lymphocyte. The model's class count
  # follows (wcsegnet_jax/core/classes.py); images of other types are left out.
  d.cell_types = ('neutrophil', 'basophil', 'lymphocyte')
  # True adds a last class for the cytoplasm (the masks' 128 gray), so the model segments whole
  # cells; False (the paper) counts the cytoplasm as background.
  d.cytoplasm = False
  # Times each dataset's train split enters an epoch, one per entry of `datasets`; () = once
  # each (the paper: the plain union). (1, 3) shows the 47 CellaVision images three times.
  d.dataset_repeats = ()
  d.test_fraction = 0.2  # the paper's 80:20 split, stratified by cell type
  d.split_seed = 0
  # Mask gray levels are snapped to the nearest of 0/128/255. A mask with more than
  # `mask_max_off_level_fraction` of its pixels farther than `mask_level_tolerance` from every
  # level does not follow the scheme and is an error.
  d.mask_level_tolerance = 40
  d.mask_max_off_level_fraction = 0.01
  # Normalisation, applied on the device (uint8 crosses the host->device link: 4x fewer bytes).
  # 'dataset': (x - mean) / std with the two below, the same for every image (the paper);
  # 'per_image': each image by its own per-channel mean and std, so a stain's overall colour
  # and strength drop out (mean and std unused).
  d.normalize = 'dataset'
  d.mean = (0.5, 0.5, 0.5)
  d.std = (0.25, 0.25, 0.25)
  # The colour step (wcsegnet_jax/data/color.py), on each image as read (whole, before resizing or
  # tiling) in data preparation, evaluation and predict alike, so another lab's stain, lamp and
  # camera reach the model in the training images' colours: 'none' (the paper) | 'reinhard'
  # (each image's CIELAB channel means and stds moved to color_reference's) | 'two_point' (each
  # CIELAB channel mapped so the image's background and nucleus anchors, its brightest 30% and
  # darkest 3% of pixels, go to color_anchors; configs/cross_lab.py).
  d.color = 'none'
  # reinhard's: L, a, b means, then L, a, b stds (CIELAB; L 0-100): the CellaVision images'
  # average.
  d.color_reference = (73.1, 16.0, 3.0, 18.6, 11.6, 16.7)
  # two_point's: the background's L, a, b, then the nucleus', the CellaVision images' average
  # over the 80 images of Dataset 2 (test images among them: six colour numbers, no labels;
  # `color.two_point_anchors` over the 65 training images of the five-type split alone gives
  # 90.2, 5.3, 15.7, 24.3, 42.5, -45.5, over the three-type split's 47 22.7, 42.2, -46.1).
  d.color_anchors = (90.2, 5.3, 15.7, 24.2, 42.6, -45.4)
  # Fine-tuning on a lab's typed cells (wcsegnet_jax/training/field_crops.py): a folder of
  # fields/ and
  # truth.csv (type and box per white cell, no masks). The model of train.init_from labels each
  # typed cell's pixels; the crops replace data.datasets. '' = off.
  d.fields_dir = ''
  d.fields_scale = 0.0  # the fields' scale to the training crops'; 0 = estimated per field

  # --- Augmentation (Keras ImageDataGenerator semantics; units explicit) -------------------------
  c.augment = a = ml_collections.ConfigDict()
  a.enabled = True
  a.rotation_deg = 40.0  # uniform in [-40, 40] degrees
  a.width_shift = 0.2  # fraction of the width, uniform in [-0.2, 0.2]
  a.height_shift = 0.2  # fraction of the height
  # Keras reads `shear_range=0.2` as 0.2 DEGREES: the paper's shear is nearly the identity.
  # We keep that faithful reading; set e.g. 11.5 for a shear of 0.2 radians.
  a.shear_deg = 0.2
  a.zoom = 0.2  # scale factors uniform in [1-0.2, 1+0.2]
  # (lower, upper) scale factors instead of zoom's symmetric range when given (Keras' zoom_range
  # as a pair): a factor below 1 magnifies (each output pixel samples nearer the centre).
  a.zoom_range = ()
  a.zoom_independent_xy = True  # Keras draws the x and y zoom independently
  a.horizontal_flip = True
  a.fill_mode = 'nearest'  # border fill: 'nearest' (Keras' default), 'reflect', 'constant'
  # Colour jitter (not in the paper; 0 = off): brightness, contrast and saturation factors
  # uniform in [1-x, 1+x], and a hue rotation uniform in [-hue_deg, hue_deg] degrees.
  a.brightness = 0.0
  a.contrast = 0.0
  a.saturation = 0.0
  a.hue_deg = 0.0
  # Optics jitter (not in the paper; 0 = off): another microscope and camera. Gamma exp(U(-g, g)),
  # Gaussian blur of sigma U(0, blur_sigma) px, noise of std U(0, noise_std) levels, JPEG at a
  # quality U(jpeg_quality, 95); on a share optics_prob of the images (1 = all).
  a.gamma = 0.0
  a.blur_sigma = 0.0
  a.noise_std = 0.0
  a.jpeg_quality = 0
  a.optics_prob = 1.0
  a.augment_repeats = 10  # an epoch sees each training image this many times (ten-fold)

  # --- Input pipeline -----------------------------------------------------------------------------
  c.input = i = ml_collections.ConfigDict()
  i.num_workers = 0  # grain worker processes; 0 = in the main process
  i.worker_buffer_size = 2
  i.read_threads = 4  # threads per process reading and augmenting (OpenCV frees the GIL)
  i.prefetch = 8  # batches read ahead per process
  i.shuffle_seed = 0

  # --- Model --------------------------------------------------------------------------------
  c.model = m = ml_collections.ConfigDict()
  # The number of classes is not a knob: it follows data.cell_types and data.cytoplasm.
  m.base_width = 64  # widths base * 2**level: 64, 128, 256, 512, bottleneck 1024
  m.num_levels = 4  # 2x2 poolings; the input is padded to a multiple of 2**num_levels
  m.blocks_per_stage = 2
  m.residual = True  # WCSegNet's residual Conv-Blocks; False gives the plain U-Net
  m.activation = 'leaky_relu'  # 'leaky_relu' | 'relu'
  m.leaky_relu_slope = 0.3  # Keras' LeakyReLU default; the paper gives none
  m.block_norm = 'none'  # 'none' | 'batch' inside the Conv-Blocks (the paper has none)
  # BatchNorm running-average momentum. The paper gives none; Keras' and Flax's 0.99 let the
  # running statistics lag behind the growing activations of the unnormalised blocks, and some
  # runs then predicted all background at evaluation; 0.9 (PyTorch's default) did not
  # (docs/results.md).
  m.bn_momentum = 0.9
  m.encoder_dropout = 0.5  # after the deepest encoder stage
  m.decoder_dropout = 0.5  # "two dropouts mid-path" of the decoder
  m.decoder_dropout_stages = (0, 1)  # decoder stages (0 = deepest) followed by a dropout
  m.head_dropout = 0.1  # in the head: conv3x3 + BatchNorm + act + dropout
  m.upsample = 'transpose'  # 'transpose' (learned 2x2, stride 2) | 'nearest' (resize)
  m.pad_mode = 'reflect'  # how the input is padded to a multiple of 2**num_levels
  # 1 = the paper. p > 1 folds each p x p pixel patch into channels at the input and unfolds p*p
  # logits per class at the output: the U-Net runs at 1/p resolution (the CPU recipe uses 2).
  m.patch_size = 1
  # > 0 (not in the paper): a residual refinement at full resolution after the head, two 3x3
  # convs of this width over the image and the logits, adding a correction to the logits (zero
  # at initialisation). With patch_size > 1 it lets pixel-exact edges follow the image.
  m.refine_width = 0
  m.dtype = 'float32'  # compute dtype: 'float32' | 'bfloat16' (parameters stay float32)

  # --- Training -----------------------------------------------------------------------------------
  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 16  # global, over all devices and hosts
  t.num_epochs = 100
  t.learning_rate = 1e-4
  t.lr_schedule = 'constant'  # 'constant' | 'cosine' (with warm-up)
  t.warmup_epochs = 0.0
  t.loss = 'ce'  # 'ce' | 'dice_ce'
  t.dice_weight = 1.0  # weight of the soft Dice term in 'dice_ce'
  t.class_weights = ()  # () = unweighted; else one weight per class
  # > 0 keeps an exponential moving average of the parameters (decay per step, warmed up as
  # min(decay, (1 + step) / (10 + step))). Training never reads it; evaluation during training,
  # the best checkpoint and `--mode=evaluate` / predict / exports use it (eval.ema). 0 = off,
  # the paper.
  t.ema_decay = 0.0
  t.log_every_steps = 50
  t.eval_every_epochs = 1
  t.checkpoint_every_epochs = 1
  t.keep_checkpoints = 3  # the last N, plus the best by test Dice
  t.max_steps = 0  # > 0 stops early (smoke runs, benchmarks)
  # A resume whose images or splits differ from those the run started on (workdir/data.json)
  # is refused: its test metrics would mix two data sets. True goes on with the new data.
  t.resume_on_changed_data = False
  # Start from a trained model's parameters instead of random ones: '' (off), 'pretrained'
  # (the shipped default model), 'pretrained:NAME' (a shipped model by name) or a training
  # workdir (its latest checkpoint). Its model config must be this config's.
  t.init_from = ''
  t.progress_bar = True  # one bar over the whole run (its ETA), shown on a terminal only
  t.distributed = False  # call jax.distributed.initialize() for multi-host runs
  # A multi-process run: how long each process waits for all of them to join, and how long a
  # process may stay silent (dead or hung) before the others stop (docs/multi_host.md).
  t.join_timeout_s = 300
  t.heartbeat_timeout_s = 100

  # --- Evaluation / prediction --------------------------------------------------------------------
  # A cell typer (wcsegnet_jax/cells/cell_typing.py): a linear classifier over the net's features
  # pooled over each cell, fitted after training; predict then types cells with it instead of
  # the vote of their nucleus pixels.
  c.typer = y = ml_collections.ConfigDict()
  y.fit = False  # fit one at the end of training (and save it in the workdir)
  y.encoder_stages = 3  # the finest encoder stages pooled...
  y.decoder_stages = 2  # ...and the finest decoder stages
  y.crop_color = 'crop'  # the colour step on each cell's crop alone | 'field' (whole)
  y.views = 6  # augmented views of each training crop
  y.l2 = 0.01  # weight decay of the classifier
  y.field_weight = 20.0  # a lab's typed cell (data.fields_dir) counts as this many crops
  y.field_views = 4  # ...in this many views: as cut, mirrored, flipped, turned (1-4)
  y.uncertain_below = 0.5  # a cell whose calibrated confidence is lower is flagged for review

  c.eval = e = ml_collections.ConfigDict()
  e.batch_size = 32
  e.raw_dir = ''  # evaluate every image of this folder (raw or folder layout)
  e.raw_layout = 'auto'  # 'auto' | 'wbc' | 'folder'
  # 'latest' | 'best' | a step | a path. 'best' was picked by test Dice during training, so its
  # test figures are optimistic; 'latest' is the unbiased default.
  e.checkpoint = 'latest'
  e.tta = False  # average predictions over flips
  e.tta_rotations = False  # with tta: the 8 symmetries of the square, not only the 4 flips
  # How probabilities become a label map (decoding.py): 'argmax' (the paper) | 'by_part' (the
  # most probable part, background / nucleus / cytoplasm, summed over its classes, then its
  # most probable class: an unsure type does not turn a sure nucleus into background).
  e.decode = 'argmax'
  # > 0: each image shows one white cell at its centre (the WBC Image Dataset's crops); all but
  # that cell becomes background, its parts grown by this many px to join (lobes up to ~2r px
  # apart stay one cell; px of data.image_size; central_cell.py).
  e.central_cell_radius = 0
  e.ema = True  # the averaged parameters, where the run kept them (train.ema_decay)
  e.worst_k = 8
  e.figure_rows = 8
  return c
