"""DataDesc: what a run knows about its data, as one typed record.

Made once per run (skipkd.train.setup.prepare_data) and read by every stage; written into each
checkpoint ("data") and the run summary ("dataset") as its `to_json()` dict, the same fields the
files have always held.
"""
from dataclasses import dataclass

__all__ = ["DataDesc", "TEST_AS_VAL"]

TEST_AS_VAL = "test-as-val"  # the protocol without a held-out split: the test set selects


@dataclass(frozen=True)
class DataDesc:
    dataset: str                     # the dataset's name (skipkd.data.DATASETS)
    mean: tuple                      # per-channel normalisation (of the images trained on)
    std: tuple
    classes: tuple                   # class names, in label order
    num_classes: int
    in_channels: int
    image_size: int
    train_size: int                  # images trained on (the held-out part excluded)
    test_size: int                   # test images read (0 when the test split is not read)
    protocol: str                    # TEST_AS_VAL, or "held-out-val (F% of train, ...)"
    val_split: float                 # the held-out fraction (0: the test set selects)
    val_size: int                    # images that select the checkpoint
    split_seed: int | None = None    # the held-out split's seed and its indices' digest
    val_indices_sha1: str | None = None
    test_read: bool = True           # False under --no-report-test
    preprocessing: object = None     # how a reader preprocessed the images (when it says)

    @property
    def held_out(self) -> bool:
        """Whether checkpoints are selected on a held-out part of the training set."""
        return self.val_split > 0

    def sizes(self) -> str:
        """'{n} train / {m} test' ('test not read' under --no-report-test)."""
        test = f"{self.test_size} test" if self.test_read else "test not read"
        return f"{self.train_size} train / {test}"

    def to_json(self) -> dict:
        """The plain dict of the checkpoint's "data" and the summary's "dataset" (optional
        fields only where they say something, as the files have always had them)."""
        out = {"dataset": self.dataset, "mean": list(self.mean), "std": list(self.std),
               "classes": list(self.classes), "num_classes": self.num_classes,
               "in_channels": self.in_channels, "image_size": self.image_size,
               "train_size": self.train_size, "test_size": self.test_size,
               "protocol": self.protocol, "val_split": self.val_split, "val_size": self.val_size}
        if self.held_out:
            out.update(split_seed=self.split_seed, val_indices_sha1=self.val_indices_sha1)
        if not self.test_read:
            out["test_read"] = False
        if self.preprocessing:
            out["preprocessing"] = self.preprocessing
        return out
