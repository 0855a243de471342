"""The live-bytes tracker: counts each storage once, frees it with its last tensor, and traces meta tensors."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from scail2.pipelines.live_bytes import LiveTensorBytes, meta_attention, peak_tensor_bytes, traced_peak


def test_counts_storages_once_and_frees_them_with_their_last_tensor():
    def run():
        a = torch.ones(100, 10)  # 4,000 bytes
        view = a[:50]  # a view: no new storage
        b = a * 2  # 8,000 live
        del a  # the view still holds a's storage
        c = b + view.sum()  # 12,000 live: the peak
        c.add_(1)  # in place: nothing new
        del view, b
        return c

    with LiveTensorBytes() as tracker:
        kept = run()
    assert tracker.peak == 12_000 + 4  # plus the 0-d sum
    assert tracker.live == 4_000  # only `kept` is left
    del kept
    assert tracker.live == 0


def test_tensors_made_before_are_not_counted_and_devices_can_be_filtered():
    weight = torch.ones(10, 10)
    assert peak_tensor_bytes(lambda: weight @ weight) == 400
    assert peak_tensor_bytes(lambda: (torch.ones(10, device="meta"), torch.ones(3)), device_type="cpu") == 12


def test_a_meta_trace_counts_what_the_cpu_allocates():
    layer = torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.GELU(), torch.nn.Linear(40, 12))
    on_cpu = peak_tensor_bytes(lambda: layer(torch.randn(3, 7, 12)))
    meta_layer = torch.nn.Sequential(torch.nn.Linear(12, 40), torch.nn.GELU(), torch.nn.Linear(40, 12)).to("meta")
    assert traced_peak(lambda: meta_layer(torch.empty(3, 7, 12, device="meta"))) == on_cpu


def test_meta_attention_allocates_the_output_only_and_restores_sdpa():
    original = F.scaled_dot_product_attention
    q = torch.empty(1, 2, 300, 16, device="meta")
    assert traced_peak(lambda: F.scaled_dot_product_attention(q, q, q)) == q.numel() * 4
    assert F.scaled_dot_product_attention is original
    with meta_attention():
        assert F.scaled_dot_product_attention is not original
    assert F.scaled_dot_product_attention is original
