"""Batches of a dataset for a device: the one DataLoader setting every stage uses."""

import torch


def loader(dataset: torch.utils.data.Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
           num_workers: int = 0, reshuffle: bool = True, device: torch.device | None = None,
           sampler=None) -> torch.utils.data.DataLoader:
    """Batches of `dataset` for `device` (pinned host memory when they go to a GPU). `shuffle`: in a
    seeded random order, new every epoch, or with `reshuffle=False` one seeded order that every
    epoch repeats; or the order of `sampler`."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    if shuffle and not reshuffle:
        sampler = torch.randperm(len(dataset), generator=generator).tolist()
        shuffle = False
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, sampler=sampler, generator=generator,
        num_workers=num_workers, pin_memory=device is not None and device.type == "cuda", persistent_workers=False,
    )
