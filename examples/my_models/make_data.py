"""`python -m my_models.make_data FOLDER`: the stripes as a user's files would hold them, to try
the README's commands on: FOLDER/stripes.npz under the user's own key names, and FOLDER/images/
with one subfolder of PNG files per class."""

import sys
from pathlib import Path

import numpy as np

from my_models.data import stripes

NPZ_KEYS = {"x_train": "images", "y_train": "labels", "x_test": "test_images", "y_test": "test_labels"}


def write_npz(path: Path, train_size: int = 300, test_size: int = 90) -> Path:
    (x_train, y_train), (x_test, y_test) = stripes(train_size, test_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=x_train, labels=y_train, test_images=x_test, test_labels=y_test)
    return path


def write_image_folder(root: Path, per_class: int = 40) -> Path:
    """RGB PNG files in class_0/, class_1/, class_2/."""
    from PIL import Image

    (x, y), _ = stripes(3 * per_class, 1)
    for i, (image, label) in enumerate(zip(x, y)):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (np.clip(image, -1, 2) + 1) / 3 * 255
        Image.fromarray(np.repeat(pixels[..., None], 3, axis=-1).astype("uint8")).save(folder / f"{i:03d}.png")
    return root


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "outputs/examples")
    print(write_npz(folder / "stripes.npz"), write_image_folder(folder / "images"))
