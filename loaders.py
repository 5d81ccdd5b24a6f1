"""How batches are drawn: the training order a resumed run repeats, validation sharded over the ranks without
repeats, and batches padded per batch with no lone last sample (which BatchNorm cannot normalise in training)."""
import functools

import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from vqa_dataset import collate


class EpochSampler(DistributedSampler):
    """DistributedSampler, also for a single process: its order depends only on seed and epoch, so a resumed run
    sees the same batches; skip starts an epoch after the samples already trained on."""

    def __init__(self, dataset, num_replicas, rank, seed):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip:])

    def __len__(self):
        return self.num_samples - self.skip


class ShardSampler(Sampler):
    """Every num_replicas-th sample from rank on, in order: the ranks' shards together hold every sample exactly
    once (DistributedSampler would repeat some to even them out, which would count them twice in validation)."""

    def __init__(self, dataset, num_replicas, rank):
        self.indices = range(rank, len(dataset), num_replicas)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


def batch_count(n, batch_size):
    """Batches of n samples: full ones, and the rest as one more, unless it is a lone sample (LoneLastMerged)."""
    return 0 if n == 0 else max(1, n // batch_size + (n % batch_size > 1))


class LoneLastMerged(Sampler):
    """Batches of batch_size of the sampler's indices in its order, a lone last sample joining the batch before it:
    BatchNorm cannot normalise a batch of one in training (a 1x1 feature map), and no row is dropped."""

    def __init__(self, sampler, batch_size):
        self.sampler, self.batch_size = sampler, batch_size

    def __iter__(self):
        indices = list(self.sampler)
        starts = list(range(0, len(indices), self.batch_size))[:batch_count(len(indices), self.batch_size)]
        for k, start in enumerate(starts):
            yield indices[start:None if k == len(starts) - 1 else start + self.batch_size]

    def __len__(self):
        return batch_count(len(self.sampler), self.batch_size)


def make_loader(dataset, batch_size, num_workers, device, sampler=None, seed=0):
    """Batches in the sampler's order (default: in order), padded per batch, a lone last sample in the batch before
    it (LoneLastMerged); pinned memory for a GPU."""
    batches = LoneLastMerged(sampler if sampler is not None else range(len(dataset)), batch_size)
    return DataLoader(dataset, batch_sampler=batches, num_workers=num_workers, pin_memory=device.type == "cuda",
                      persistent_workers=num_workers > 0, collate_fn=functools.partial(collate, pad_id=dataset.pad_id),
                      generator=torch.Generator().manual_seed(seed))
