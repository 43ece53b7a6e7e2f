"""Validation during training: the confusion matrix of a model over a loader, sharded across DDP ranks.

Inference is `seglab.engine.inference.whole_image` (padded to the basenet's stride and cropped back), the
path `seglab test` takes, so the final val mIoU a run logs is the mIoU `seglab test` reports on the same
images without test-time augmentation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor
from tqdm import tqdm

from seglab.engine import distributed
from seglab.engine.inference import model_stride, whole_image
from seglab.engine.signals import StopFlag
from seglab.metrics.confusion import confusion_matrix


@torch.inference_mode()
def validate(
    model: torch.nn.Module,
    loader: Iterable[dict],
    ignore_index: int,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    stop: StopFlag | None = None,
    desc: str = "val",
    report: Callable[[str], None] = print,
    show: bool = True,
) -> Tensor | None:
    """Return the int64 confusion matrix of `model` (a SegmentationModel) over `loader`, summed over ranks.

    Returns None on every rank when `stop` was signalled on any rank. Each rank must see a disjoint
    share of the samples (`ShardSampler`), so 1 or w processes give the same matrix. Skipped samples of
    every rank are reported (through rank 0's `report`) once the ranks are done.
    """
    num_classes = model.num_classes
    multiple = model_stride(model)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    interrupted, skipped = False, []
    model.eval()
    for batch in tqdm(loader, desc=desc, leave=False, disable=None if show else True):
        if stop is not None and stop.signum:
            interrupted = True
            break
        skipped += batch["skipped"]
        if len(batch["index"]) == 0:
            continue
        images = batch["image"].to(device, non_blocking=True)
        labels = batch["label"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = whole_image(model, model.normalize(images), multiple)
        cm += confusion_matrix(logits.argmax(1), labels, num_classes, ignore_index)
    distributed.all_reduce_sum(cm)
    for item in (item for items in distributed.gather_objects(skipped) for item in items):
        report(f"{desc}: skipped {item['path']}: {item['reason']}")
    return None if distributed.any_rank(interrupted, device) else cm.cpu()
