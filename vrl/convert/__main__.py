"""python -m vrl.convert --format=FORMAT --src=PATH --workdir=OUT [--dry_run] [options]

PATH and OUT are local paths or bucket URLs (gs://BUCKET/PATH).
"""

import sys

from absl import app, flags

from vrl import convert, storage

FLAGS = flags.DEFINE_enum("format", None, list(convert.FORMATS), "Checkpoint format.")
SRC = flags.DEFINE_string(
    "src", None, "Checkpoint file or Hugging Face folder: a local path or a bucket URL."
)
WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory to write (must hold no checkpoint): a folder or a bucket URL."
)
DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Print the key mapping and the checks; write nothing."
)
FRAMES = flags.DEFINE_integer("frames", None, "Clip length the model was trained on.")
IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Clip height and width.")
ARCH = flags.DEFINE_string(
    "arch",
    None,
    "Architecture when the file does not say (ViT size, r3d_18...); hf_vit: key=value list "
    "(inflation=central_frame|average, tubelet, tokenlearner_layer/_tokens/_version, tokenfuser).",
)
flags.mark_flags_as_required(["format", "src"])


def main(argv):
    del argv
    options = convert.Options(frames=FRAMES.value, image_size=IMAGE_SIZE.value, arch=ARCH.value)
    try:
        if DRY_RUN.value:
            converted, tensors = convert.read(FLAGS.value, SRC.value, options)
            print(convert.format_mapping(converted, tensors))
            config = convert.common.run_config(converted, f"{FLAGS.value}:{SRC.value}")
            objective = convert.common.base.build(config)
            convert.common.check(
                converted, tensors, objective, convert.common.init_batch(objective, converted.clip)
            )
            print(
                f"OK: {len(converted.mapping)} tensors map onto {config['model']['name']} / "
                f"{config['objective']['name']}; nothing written (--dry_run)"
            )
            return 0
        if not WORKDIR.value:
            print("--workdir is required (or pass --dry_run)", file=sys.stderr)
            return 2
        config = convert.convert(FLAGS.value, SRC.value, WORKDIR.value, options)
    except (convert.ConversionError, storage.StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(
        f"wrote {WORKDIR.value}: model {config['model']['name']}, objective "
        f"{config['objective']['name']}, step 0"
    )
    return 0


if __name__ == "__main__":
    app.run(main)
