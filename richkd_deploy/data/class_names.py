"""Class names of the built-in datasets, embedded so no metadata file is needed.

CLIP's text prompts are built from these names, so their order must be the order of
the label integers in the data files. CIFAR-100's fine labels are stored with
underscores (``aquarium_fish``); callers that want prose replace them themselves.
"""

from __future__ import annotations

import difflib

from richkd_deploy.errors import DataError

#: Every name `build_dataset` accepts, in the spelling recipes use.
DATASETS: tuple[str, ...] = ("cifar10", "cifar100", "fashion-mnist", "imagefolder", "synthetic")

# Spellings people type for the same dataset; the key is lower-cased with '_' and ' ' -> '-'.
_ALIASES = {
    "cifar-10": "cifar10",
    "cifar-100": "cifar100",
    "fashion-mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "image-folder": "imagefolder",
}

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

# Fine labels in torchvision's (= the dataset's meta file) order, which is alphabetical.
CIFAR100_CLASSES: tuple[str, ...] = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup", "dinosaur",
    "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house", "kangaroo", "keyboard",
    "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain",
    "mouse", "mushroom", "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket",
    "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider",
    "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

SYNTHETIC_NUM_CLASSES = 10
SYNTHETIC_CLASSES: tuple[str, ...] = tuple(f"class {k}" for k in range(SYNTHETIC_NUM_CLASSES))

_BY_NAME: dict[str, tuple[str, ...]] = {
    "cifar10": CIFAR10_CLASSES,
    "cifar100": CIFAR100_CLASSES,
    "fashion-mnist": FASHION_MNIST_CLASSES,
    "synthetic": SYNTHETIC_CLASSES,
}


def canonical_name(name: str) -> str:
    """The `DATASETS` spelling of `name` ("CIFAR-100", "fashion_mnist" ... are accepted),
    so every module compares names one way; an unknown name raises DataError with the
    closest known names."""
    key = str(name).strip().lower().replace("_", "-").replace(" ", "-")
    key = _ALIASES.get(key, key)
    if key in DATASETS:
        return key
    close = difflib.get_close_matches(key, list(DATASETS) + list(_ALIASES), n=3, cutoff=0.5)
    close = list(dict.fromkeys(_ALIASES.get(c, c) for c in close))
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise DataError(f"data.dataset: unknown dataset {name!r}; {hint}choose one of {', '.join(DATASETS)}")


def class_names(dataset_name: str) -> list[str]:
    """Class names of a built-in dataset, index = label.

    imagefolder has no fixed names (they are its folder names), so it raises DataError:
    use ``dataset.classes`` of the built dataset instead.
    """
    key = canonical_name(dataset_name)
    if key not in _BY_NAME:
        raise DataError(f"{key}: class names come from the dataset's folders; build the dataset and use its .classes")
    return list(_BY_NAME[key])
