import torch

from frozenlm.measure import PeakMemory


def test_peak_memory_sees_an_allocation_freed_before_the_block_ends() -> None:
    with PeakMemory() as peak:
        big = torch.ones(64 * 2**20 // 4)  # 64 MiB
        big.add_(1)
        del big
    assert peak.exact  # Linux: the kernel's high-water mark
    assert 60 <= peak.mb < 200


def test_nothing_allocated_is_close_to_nothing() -> None:
    with PeakMemory() as peak:
        pass
    assert peak.mb < 20
